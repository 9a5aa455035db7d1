"""Candidate models: a configured grid of families and hyperparameters, fitted and evaluated.

The same `fit_and_evaluate` runs in parallel as Ray tasks (`train_grid_on_ray`) or one after
another in this process (`train_grid_sequential`, the benchmark's baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)
from sklearn.tree import DecisionTreeClassifier

FAMILIES = {
    "decision_tree": DecisionTreeClassifier,
    "random_forest": RandomForestClassifier,
    "logistic_regression": LogisticRegression,
}


@dataclass
class Candidate:
    spec: dict[str, Any]
    model: Any
    metrics: dict[str, Any]

    @property
    def family(self) -> str:
        return str(self.spec["family"])

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.spec.items() if k != "family"}


def build_model(spec: dict[str, Any], seed: int) -> Any:
    """An unfitted estimator for a grid entry, e.g. {"family": "decision_tree", "max_depth": 3}."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise ValueError(f"candidate {spec}: unknown family {family!r}; known: {sorted(FAMILIES)}")
    params = {k: v for k, v in spec.items() if k != "family"}
    if family == "logistic_regression":
        params.setdefault("max_iter", 1000)
    else:
        params.setdefault("random_state", seed)
    return FAMILIES[family](**params)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision and recall, and the confusion matrix."""
    labels = list(range(len(label_names)))
    precision = precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "precision": {name: float(p) for name, p in zip(label_names, precision, strict=True)},
        "recall": {name: float(r) for name, r in zip(label_names, recall, strict=True)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def fit_and_evaluate(
    spec: dict[str, Any],
    seed: int,
    train: tuple[np.ndarray, np.ndarray],
    holdout: tuple[np.ndarray, np.ndarray],
    label_names: list[str],
) -> Candidate:
    model = build_model(spec, seed)
    model.fit(*train)
    metrics = classification_metrics(holdout[1], model.predict(holdout[0]), label_names)
    return Candidate(spec=dict(spec), model=model, metrics=metrics)


def train_grid_sequential(
    grid: list[dict[str, Any]], seed: int, train, holdout, label_names: list[str]
) -> list[Candidate]:
    return [fit_and_evaluate(spec, seed, train, holdout, label_names) for spec in grid]


def train_grid_on_ray(
    grid: list[dict[str, Any]], seed: int, train, holdout, label_names: list[str]
) -> list[Candidate]:
    """One Ray task per candidate; the data goes to the object store once."""
    remote_fit = ray.remote(num_cpus=1)(fit_and_evaluate)
    train_ref, holdout_ref = ray.put(train), ray.put(holdout)
    refs = [remote_fit.remote(spec, seed, train_ref, holdout_ref, label_names) for spec in grid]
    return ray.get(refs)


def best(candidates: list[Candidate], metric: str) -> Candidate:
    """The highest `metric`; ties go to the earlier grid entry, so the choice is deterministic."""
    return max(candidates, key=lambda c: (c.metrics[metric], -candidates.index(c)))
