"""Train a model on a pinned Iceberg snapshot, evaluate it on a holdout, register, promote."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from mlplatform import model_registry
from mlplatform.iceberg_tables import load_table
from mlplatform.settings import Settings


@dataclass(frozen=True)
class TrainingResult:
    version: int
    snapshot_id: int
    training_rows: int
    holdout_rows: int
    accuracy: float
    macro_f1: float
    champion_accuracy: float | None
    promoted: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def read_snapshot(s: Settings, snapshot_id: int | None = None) -> tuple[pd.DataFrame, int]:
    """The features table at one snapshot (default: the current one) and that snapshot's id."""
    table = load_table(s, s.features_table)
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id else table.current_snapshot()
    if snapshot is None:
        raise LookupError(f"{s.table_id(s.features_table)} has no snapshot: nothing to train on")
    columns = [*s.feature_columns, s.label_column]
    frame = table.scan(snapshot_id=snapshot.snapshot_id, selected_fields=tuple(columns)).to_pandas()
    return frame, snapshot.snapshot_id


def split(s: Settings, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic, stratified train/holdout split."""
    stratify = frame[s.label_column] if frame[s.label_column].value_counts().min() >= 2 else None
    return train_test_split(
        frame, test_size=s.holdout_fraction, random_state=s.seed, stratify=stratify
    )


def evaluate(s: Settings, model: object, holdout: pd.DataFrame) -> dict[str, float]:
    x = holdout[s.feature_columns].to_numpy(dtype=np.float64)
    y = holdout[s.label_column].to_numpy()
    predicted = model.predict(x)  # type: ignore[attr-defined]
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, average="macro")),
    }


def train(s: Settings, snapshot_id: int | None = None) -> TrainingResult:
    """Train, evaluate, register; promote when not worse than the champion on this holdout."""
    frame, snapshot_id = read_snapshot(s, snapshot_id)
    if len(frame) < 10:
        raise ValueError(f"snapshot {snapshot_id} has {len(frame)} rows; at least 10 are needed")
    train_rows, holdout = split(s, frame)
    params = {"n_estimators": s.model_n_estimators, "max_depth": s.model_max_depth}
    model = RandomForestClassifier(**params, random_state=s.seed, n_jobs=1)
    model.fit(train_rows[s.feature_columns].to_numpy(dtype=np.float64), train_rows[s.label_column])
    metrics = evaluate(s, model, holdout)
    row = model_registry.register(
        s, model, family="random_forest", params=params, metrics=metrics,
        training_table=s.table_id(s.features_table), training_snapshot_id=snapshot_id,
        training_rows=len(train_rows), feature_order=list(s.feature_columns),
        label_names=list(s.label_names),
    )  # fmt: skip
    try:
        champion = model_registry.get_version(s)
    except LookupError:
        champion = None
    champion_accuracy = None
    if champion is None:
        promoted, reason = True, "no champion yet"
    else:
        champion_model = model_registry.load_model(model_registry.model_ref(champion))
        champion_accuracy = evaluate(s, champion_model, holdout)["accuracy"]
        promoted = metrics["accuracy"] >= champion_accuracy
        reason = (
            f"accuracy {metrics['accuracy']:.4f} vs champion v{champion.version} "
            f"{champion_accuracy:.4f} on the same holdout"
        )
    if promoted:
        model_registry.promote(s, row.version)
    return TrainingResult(
        version=row.version, snapshot_id=snapshot_id, training_rows=len(train_rows),
        holdout_rows=len(holdout), accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"],
        champion_accuracy=champion_accuracy, promoted=promoted, reason=reason,
    )  # fmt: skip
