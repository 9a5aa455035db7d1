"""A small champion model for tests that need one to answer, not to be good: a depth-3 tree over
scikit-learn's Iris rows, registered under the settings' feature order and label names."""

from __future__ import annotations

from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from mlplatform.registry import model_registry
from mlplatform.settings import Settings


def register_small_champion(s: Settings) -> DecisionTreeClassifier:
    """Register and promote the tree in the settings' registry; the fitted model (to compare
    predictions with)."""
    iris = load_iris()
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(iris.data, iris.target)
    version = model_registry.register(
        s,
        model,
        family="decision_tree",
        params={"max_depth": 3},
        metrics={"accuracy": float(model.score(iris.data, iris.target))},
        training_table="sklearn.load_iris",
        training_snapshot_id=0,
        training_rows=len(iris.target),
        feature_order=s.feature_columns,
        label_names=s.label_names,
    )
    model_registry.promote(s, version.version)
    return model
