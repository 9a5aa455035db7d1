"""Models trained elsewhere: a scikit-learn estimator or pipeline saved with skops, or a
classifier in ONNX (registry.onnx_model), imported as a candidate of the platform's model after
the checks a trained candidate passes by construction.

A skops file loads with scikit-learn and numpy types only (the registry's rule), an ONNX file
with the standard operators only; the model is a classifier with probabilities; its inputs are
the dataset's features (all of them, in the order it was fitted on: `feature_names_in_`, or the
order given, or the dataset's); its classes are the dataset's label indexes; it predicts on what
the platform feeds it (one float array per batch, features in its order). It is scored on the
holdout of a pinned snapshot, split as retraining splits it, registered with that lineage and
the source file's SHA-256, and the promotion rule of retraining decides, under the same
one-at-a-time lease.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlplatform.registry import model_registry
from mlplatform.registry.onnx_model import OnnxModel, OnnxModelError
from mlplatform.settings import Settings
from mlplatform.training.retrain import against_champion, evaluate, one_at_a_time, split
from mlplatform.training.snapshot_sample import read_training_sample


class ModelMismatch(ValueError):
    """The model does not fit the dataset: what differs, and how to fix it."""


@dataclass(frozen=True)
class ImportResult:
    version: int
    feature_order: list[str]
    metrics: dict[str, Any]
    snapshot_id: int
    holdout_rows: int
    champion_before: int | None
    champion_score: float | None
    decision: str  # promote | reject
    reason: str


def input_order(s: Settings, model: Any, feature_order: list[str] | None = None) -> list[str]:
    """The model's input columns: every feature of the dataset once, in the order it was fitted
    on; a ModelMismatch naming the difference otherwise."""
    fitted = getattr(model, "feature_names_in_", None)
    fitted = None if fitted is None else [str(name) for name in fitted]
    if fitted is not None and feature_order is not None and fitted != feature_order:
        raise ModelMismatch(
            f"the model was fitted on columns {fitted}, not the given order {feature_order}"
        )
    order = fitted or feature_order or list(s.feature_columns)
    expected = list(s.feature_columns)
    unknown = [c for c in order if c not in expected]
    missing = [c for c in expected if c not in order]
    if unknown or missing or len(order) != len(expected):
        raise ModelMismatch(
            f"the model's inputs {order} are not the features of dataset {s.dataset_spec.name} "
            f"({expected}): unknown {unknown}, missing {missing}"
        )
    width = getattr(model, "n_features_in_", len(order))
    if width != len(order):
        raise ModelMismatch(f"the model takes {width} features; dataset has {len(order)}")
    return order


def check_classes(s: Settings, model: Any) -> None:
    """Classes are the label indexes 0..n-1 (the features table's label column), and the model
    gives probabilities (every prediction carries them)."""
    if not (hasattr(model, "predict") and hasattr(model, "predict_proba")):
        raise ModelMismatch(
            f"{type(model).__name__} is not a classifier with predict_proba: every prediction "
            "of the platform carries the probability of each class"
        )
    classes = getattr(model, "classes_", None)
    allowed = list(range(len(s.label_names)))
    if classes is None or not all(
        isinstance(c, int | np.integer) and int(c) in allowed for c in classes
    ):
        raise ModelMismatch(
            f"the model's classes {None if classes is None else list(classes)} are not label "
            f"indexes of dataset {s.dataset_spec.name} ({allowed} for {list(s.label_names)}): "
            "fit it on the label column's values"
        )


def import_model(
    s: Settings,
    path: Path,
    feature_order: list[str] | None = None,
    snapshot_id: int | None = None,
) -> ImportResult:
    """Check, score, register and decide on a skops or ONNX (`.onnx`) file trained elsewhere
    (module docstring); ModelMismatch or ModelIntegrityError, with nothing registered, when it
    does not fit."""
    data = path.read_bytes()
    if path.suffix == ".onnx":
        try:
            model: Any = OnnxModel(data, str(path))
        except OnnxModelError as error:
            raise ModelMismatch(str(error)) from error
        estimator = f"onnx from {model.producer}"
    else:
        model = model_registry.load_trusted(data, str(path), "save the model with skops.io.dump")
        estimator = type(model).__name__
    order = input_order(s, model, feature_order)
    check_classes(s, model)
    with one_at_a_time(s, f"the import of {path.name}") as still_held:
        sample = read_training_sample(s, snapshot_id)
        _, holdout = split(s, sample.frame)
        try:
            metrics = evaluate(s, model, holdout, order)
        except Exception as error:  # the user's model: any failure is a mismatch
            raise ModelMismatch(
                f"the model failed on a float array of the features in order {order} (what "
                f"the platform feeds it): {type(error).__name__}: {error}"
            ) from error
        still_held()
        row = model_registry.register(
            s,
            model,
            family="external",
            params={
                "estimator": estimator,
                "source": path.name,
                "source_sha256": hashlib.sha256(data).hexdigest(),
            },
            metrics=metrics,
            training_table=s.table_id(s.features_table),  # where it was scored
            training_snapshot_id=sample.snapshot_id,
            training_rows=0,  # trained elsewhere
            rows_available=sample.rows_available,
            rows_used=sample.rows_used,
            sample_seed=sample.seed,
            feature_order=order,
            label_names=list(s.label_names),
        )
        champion, champion_score, decision, reason = against_champion(s, metrics, holdout)
        still_held()
        model_registry.record_decision(s, decision, row.version, f"imported: {reason}")
    return ImportResult(
        version=row.version,
        feature_order=order,
        metrics=metrics,
        snapshot_id=sample.snapshot_id,
        holdout_rows=len(holdout),
        champion_before=champion.version if champion else None,
        champion_score=champion_score,
        decision=decision,
        reason=reason,
    )
