"""mlplatform.training.candidates: the grid's estimators, metrics, sequential training, the pick."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from mlplatform.training.candidates import (
    FAMILIES,
    Candidate,
    best,
    build_model,
    classification_metrics,
    fit_and_evaluate,
    train_grid_sequential,
)

pytestmark = pytest.mark.unit

IRIS_LABELS = ["setosa", "versicolor", "virginica"]
GRID = [
    {"family": "decision_tree", "max_depth": 1},
    {"family": "decision_tree", "max_depth": 3},
    {"family": "random_forest", "n_estimators": 20, "max_depth": 3},
    {"family": "logistic_regression", "C": 1.0},
]


@pytest.fixture(scope="module")
def iris() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    x, y = load_iris(return_X_y=True)
    x_train, x_hold, y_train, y_hold = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    return (x_train, y_train), (x_hold, y_hold)


# --- build_model -------------------------------------------------------------------------------


def test_families_are_the_three_known_ones() -> None:
    assert sorted(FAMILIES) == ["decision_tree", "logistic_regression", "random_forest"]


def test_build_decision_tree_with_params_and_seed() -> None:
    model = build_model({"family": "decision_tree", "max_depth": 3, "min_samples_leaf": 2}, 11)
    assert type(model) is DecisionTreeClassifier
    params = model.get_params()
    assert params["max_depth"] == 3
    assert params["min_samples_leaf"] == 2
    assert params["random_state"] == 11
    assert not hasattr(model, "classes_")  # unfitted


def test_build_random_forest_with_params_and_seed() -> None:
    model = build_model({"family": "random_forest", "n_estimators": 17, "max_depth": 4}, 5)
    assert type(model) is RandomForestClassifier
    params = model.get_params()
    assert (params["n_estimators"], params["max_depth"], params["random_state"]) == (17, 4, 5)


def test_build_logistic_regression_gets_max_iter_not_seed() -> None:
    model = build_model({"family": "logistic_regression", "C": 0.5}, 5)
    assert type(model) is LogisticRegression
    params = model.get_params()
    assert params["C"] == 0.5
    assert params["max_iter"] == 1000
    assert params["random_state"] is None


def test_explicit_params_win_over_defaults() -> None:
    tree = build_model({"family": "decision_tree", "random_state": 99}, 5)
    assert tree.get_params()["random_state"] == 99
    logistic = build_model({"family": "logistic_regression", "max_iter": 50}, 5)
    assert logistic.get_params()["max_iter"] == 50


def test_build_model_leaves_spec_alone() -> None:
    spec = {"family": "decision_tree", "max_depth": 2}
    build_model(spec, 3)
    assert spec == {"family": "decision_tree", "max_depth": 2}


@pytest.mark.parametrize(
    "spec", [{"family": "svm", "C": 1.0}, {"max_depth": 3}], ids=["unknown", "missing"]
)
def test_unknown_family_names_the_known_ones(spec: dict) -> None:
    with pytest.raises(ValueError, match="unknown family") as info:
        build_model(spec, 0)
    message = str(info.value)
    for family in ("decision_tree", "random_forest", "logistic_regression"):
        assert family in message


def test_unknown_param_is_rejected_by_the_estimator() -> None:
    with pytest.raises(TypeError):
        build_model({"family": "decision_tree", "no_such_param": 1}, 0)


# --- classification_metrics --------------------------------------------------------------------


def test_classification_metrics_hand_made_example() -> None:
    labels = ["a", "b", "c"]
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, labels)
    assert set(m) == {"accuracy", "macro_f1", "precision", "recall", "confusion_matrix"}
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision: a 2/2, b 1/2, c 1/2; recall: a 2/3, b 1/2, c 1/1
    assert m["precision"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.5})
    assert m["recall"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
    # f1: a 0.8, b 0.5, c 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # rows are true classes, columns predicted ones (not symmetric, so the orientation shows)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_classification_metrics_are_plain_json_values() -> None:
    m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["x", "y"])
    assert isinstance(m["accuracy"], float) and isinstance(m["macro_f1"], float)
    assert all(type(v) is float for v in (*m["precision"].values(), *m["recall"].values()))
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert json.loads(json.dumps(m)) == m


def test_classification_metrics_cover_a_class_that_never_occurs() -> None:
    m = classification_metrics(np.array([0, 1]), np.array([0, 1]), ["x", "y", "z"])
    assert m["accuracy"] == 1.0
    assert m["precision"] == {"x": 1.0, "y": 1.0, "z": 0.0}
    assert m["recall"] == {"x": 1.0, "y": 1.0, "z": 0.0}
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


# --- fit_and_evaluate and train_grid_sequential ------------------------------------------------


def test_fit_and_evaluate_returns_fitted_model_and_copy_of_spec(iris) -> None:
    train, holdout = iris
    spec = {"family": "decision_tree", "max_depth": 2}
    candidate = fit_and_evaluate(spec, 7, train, holdout, IRIS_LABELS)
    assert candidate.spec == spec and candidate.spec is not spec
    assert candidate.family == "decision_tree"
    assert candidate.params == {"max_depth": 2}
    assert candidate.model.get_depth() <= 2
    predicted = candidate.model.predict(holdout[0])
    assert candidate.metrics["accuracy"] == pytest.approx(np.mean(predicted == holdout[1]))


def test_train_grid_sequential_one_candidate_per_entry_in_order(iris) -> None:
    train, holdout = iris
    candidates = train_grid_sequential(GRID, 7, train, holdout, IRIS_LABELS)
    assert [c.spec for c in candidates] == GRID
    assert [c.family for c in candidates] == [
        "decision_tree",
        "decision_tree",
        "random_forest",
        "logistic_regression",
    ]
    assert [type(c.model) for c in candidates] == [
        DecisionTreeClassifier,
        DecisionTreeClassifier,
        RandomForestClassifier,
        LogisticRegression,
    ]
    # Hyperparameters reached the estimators: a stump cannot separate three classes.
    assert candidates[0].model.get_depth() == 1
    assert candidates[0].metrics["accuracy"] <= 2 / 3 + 1e-9
    for c in candidates[1:]:
        assert c.metrics["accuracy"] > 0.85, c.spec
    assert candidates[2].model.random_state == 7
    for c in candidates:
        assert set(c.metrics["precision"]) == set(IRIS_LABELS)
        assert sum(map(sum, c.metrics["confusion_matrix"])) == len(holdout[1])


def test_train_grid_sequential_is_deterministic_for_a_seed(iris) -> None:
    train, holdout = iris
    first = train_grid_sequential(GRID, 7, train, holdout, IRIS_LABELS)
    second = train_grid_sequential(GRID, 7, train, holdout, IRIS_LABELS)
    assert [c.metrics for c in first] == [c.metrics for c in second]
    forest_a, forest_b = first[2].model, second[2].model
    np.testing.assert_array_equal(
        forest_a.predict_proba(holdout[0]), forest_b.predict_proba(holdout[0])
    )
    np.testing.assert_array_equal(forest_a.feature_importances_, forest_b.feature_importances_)


def test_train_grid_sequential_seed_reaches_random_models(iris) -> None:
    train, holdout = iris
    grid = [{"family": "random_forest", "n_estimators": 10, "max_depth": 3}]
    a = train_grid_sequential(grid, 1, train, holdout, IRIS_LABELS)[0].model
    b = train_grid_sequential(grid, 2, train, holdout, IRIS_LABELS)[0].model
    assert (a.random_state, b.random_state) == (1, 2)
    assert not np.array_equal(a.feature_importances_, b.feature_importances_)


def test_train_grid_sequential_empty_grid(iris) -> None:
    train, holdout = iris
    assert train_grid_sequential([], 7, train, holdout, IRIS_LABELS) == []


# --- best --------------------------------------------------------------------------------------


def _candidate(name: str, **metrics: float) -> Candidate:
    spec = {"family": "decision_tree", "name": name}
    return Candidate(spec=spec, model=object(), metrics=metrics)


def test_best_picks_highest_metric() -> None:
    candidates = [
        _candidate("a", macro_f1=0.7, accuracy=0.99),
        _candidate("b", macro_f1=0.9, accuracy=0.80),
        _candidate("c", macro_f1=0.8, accuracy=0.90),
    ]
    assert best(candidates, "macro_f1").spec["name"] == "b"
    assert best(candidates, "accuracy").spec["name"] == "a"


def test_best_picks_last_when_it_is_highest() -> None:
    candidates = [_candidate("a", macro_f1=0.1), _candidate("b", macro_f1=0.2)]
    assert best(candidates, "macro_f1") is candidates[1]


def test_best_breaks_ties_by_grid_order() -> None:
    candidates = [
        _candidate("a", macro_f1=0.5),
        _candidate("b", macro_f1=0.9),
        _candidate("c", macro_f1=0.7),
        _candidate("d", macro_f1=0.9),
    ]
    assert best(candidates, "macro_f1") is candidates[1]
    assert best(list(reversed(candidates)), "macro_f1") is candidates[3]


def test_best_on_trained_grid_ties_go_to_earlier_entry(iris) -> None:
    train, holdout = iris
    grid = [
        {"family": "decision_tree", "max_depth": 3},
        {"family": "decision_tree", "max_depth": 3},
    ]
    candidates = train_grid_sequential(grid, 7, train, holdout, IRIS_LABELS)
    assert candidates[0].metrics == candidates[1].metrics
    assert best(candidates, "macro_f1") is candidates[0]


def test_best_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        best([], "macro_f1")


def test_best_unknown_metric_raises() -> None:
    with pytest.raises(KeyError):
        best([_candidate("a", macro_f1=0.5)], "auc")
