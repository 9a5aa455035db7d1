"""The compiled tree predictor answers exactly as scikit-learn's own predict_proba."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from mlplatform.inference.fast_predict import WALK_ROWS, CompiledTrees, compile_model

X, Y = load_iris(return_X_y=True)


@pytest.mark.parametrize(
    "model",
    [
        RandomForestClassifier(n_estimators=30, max_depth=6, random_state=1),
        RandomForestClassifier(n_estimators=7, random_state=2),  # unbounded depth
        ExtraTreesClassifier(n_estimators=10, max_depth=4, random_state=3),
        DecisionTreeClassifier(max_depth=3, random_state=4),
    ],
    ids=["forest", "deep-forest", "extra-trees", "tree"],
)
@pytest.mark.parametrize("rows", [1, 5, WALK_ROWS, WALK_ROWS + 1, 500])
def test_same_probabilities_as_scikit_learn(model: object, rows: int) -> None:
    model.fit(X, Y)  # type: ignore[attr-defined]
    compiled = compile_model(model)
    assert isinstance(compiled, CompiledTrees)
    rng = np.random.default_rng(rows)
    # Iris rows, values on the thresholds themselves, and values off the training range.
    x = np.concatenate([X, np.round(rng.uniform(-1, 9, (rows, 4)), 2)])[-rows:]
    splits = np.isfinite(compiled.thresholds)
    for j in range(4):  # a row exactly on a split threshold of each feature that has one
        on = compiled.thresholds[splits & (compiled.features == j)]
        x[0, j] = on[0] if len(on) else x[0, j]
    assert np.array_equal(compiled.predict_proba(x), model.predict_proba(x))  # type: ignore[attr-defined]
    assert list(compiled.classes_) == list(model.classes_)  # type: ignore[attr-defined]


def test_input_outside_the_fast_path_goes_to_the_model() -> None:
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, Y)
    compiled = compile_model(model)
    missing = np.array([[1.0, np.nan, 1.0, 1.0], [6.0, 3.0, 5.0, 2.0]])
    assert np.array_equal(compiled.predict_proba(missing), model.predict_proba(missing))
    with pytest.raises(ValueError, match="features"):
        compiled.predict_proba(np.array([[1.0, 2.0]]))


def test_other_models_are_left_as_they_are() -> None:
    model = LogisticRegression(max_iter=500).fit(X, Y)
    assert compile_model(model) is model
