"""Retraining: a pinned Iceberg snapshot, a candidate grid on Ray, a promotion decision, drift.

Every candidate is registered with its metrics and lineage. The best one (by the configured
metric) is compared with the current champion on the same holdout and promoted only when it is
not worse by more than the configured margin; the decision and its reason are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from mlplatform.connectors.iceberg_tables import count_rows, load_catalog, load_table
from mlplatform.connectors.ray_runtime import connect
from mlplatform.registry import model_registry
from mlplatform.settings import Settings
from mlplatform.training.candidates import (
    Candidate,
    best,
    classification_metrics,
    train_grid_on_ray,
    train_grid_sequential,
)
from mlplatform.training.drift import drift_report


@dataclass(frozen=True)
class RetrainResult:
    snapshot_id: int
    training_rows: int
    holdout_rows: int
    candidates: list[dict[str, Any]]
    best_version: int
    best_metrics: dict[str, Any]
    champion_before: int | None
    champion_score: float | None
    decision: str  # promote | reject
    reason: str
    drift: list[dict[str, Any]] = field(default_factory=list)


def read_snapshot(
    s: Settings, snapshot_id: int | None = None, table_id: str | None = None
) -> tuple[pd.DataFrame, int]:
    """A features table (default: the configured one) at one snapshot (default: the current
    one), and that snapshot's id."""
    table = load_catalog(s).load_table(table_id) if table_id else load_table(s, s.features_table)
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id else table.current_snapshot()
    if snapshot is None:
        wanted = f"snapshot {snapshot_id}" if snapshot_id else "any snapshot"
        raise LookupError(f"{table_id or s.table_id(s.features_table)} has no {wanted}")
    columns = [s.key_column, *s.feature_columns, s.label_column]
    frame = table.scan(snapshot_id=snapshot.snapshot_id, selected_fields=tuple(columns)).to_pandas()
    # Sorting by key makes the split independent of file order: same snapshot, same model.
    return frame.sort_values(s.key_column, ignore_index=True), snapshot.snapshot_id


def rows_since_training(s: Settings) -> int:
    """Feature rows added since the snapshot the champion was trained on (all, if none)."""
    table = load_table(s, s.features_table)
    try:
        champion = model_registry.get_version(s)
    except LookupError:
        return count_rows(table)
    return count_rows(table) - count_rows(table, champion.training_snapshot_id)


def split(s: Settings, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic, stratified train/holdout split."""
    stratify = frame[s.label_column] if frame[s.label_column].value_counts().min() >= 2 else None
    return train_test_split(
        frame, test_size=s.holdout_fraction, random_state=s.seed, stratify=stratify
    )


def evaluate(s: Settings, model: object, holdout: pd.DataFrame) -> dict[str, Any]:
    x = holdout[s.feature_columns].to_numpy(dtype=np.float64)
    predicted = model.predict(x)  # type: ignore[attr-defined]
    return classification_metrics(holdout[s.label_column].to_numpy(), predicted, s.label_names)


def _arrays(s: Settings, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return frame[s.feature_columns].to_numpy(dtype=np.float64), frame[s.label_column].to_numpy()


def train_candidates(
    s: Settings, train_rows: pd.DataFrame, holdout: pd.DataFrame, on_ray: bool = True
) -> list[Candidate]:
    args = (s.candidate_grid, s.seed, _arrays(s, train_rows), _arrays(s, holdout), s.label_names)
    if on_ray:
        connect(s)
        return train_grid_on_ray(*args)
    return train_grid_sequential(*args)


def decide(s: Settings, score: float, champion_score: float | None) -> tuple[str, str]:
    """Promote when no champion exists or the candidate is not worse by more than the margin."""
    metric = s.promotion_metric
    if champion_score is None:
        return "promote", "no champion yet"
    verdict = "promote" if score >= champion_score - s.promotion_margin else "reject"
    return verdict, (
        f"{metric} {score:.4f} vs champion {champion_score:.4f} on the same holdout "
        f"(margin {s.promotion_margin})"
    )


def _drift(s: Settings, current: pd.DataFrame, champion) -> list[dict[str, Any]]:
    if champion is None:
        return []
    # The champion's own training data: it may come from another table than today's.
    reference, _ = read_snapshot(s, champion.training_snapshot_id, champion.training_table)
    return drift_report(reference, current, s.feature_columns, s.drift_bins, s.drift_psi_threshold)


def retrain(s: Settings, snapshot_id: int | None = None, on_ray: bool = True) -> RetrainResult:
    """Train the grid on a pinned snapshot, register every candidate, promote the best or not."""
    frame, snapshot_id = read_snapshot(s, snapshot_id)
    if len(frame) < 10:
        raise ValueError(f"snapshot {snapshot_id} has {len(frame)} rows; at least 10 are needed")
    train_rows, holdout = split(s, frame)
    candidates = train_candidates(s, train_rows, holdout, on_ray)
    registered = [
        model_registry.register(
            s,
            c.model,
            family=c.family,
            params=c.params,
            metrics=c.metrics,
            training_table=s.table_id(s.features_table),
            training_snapshot_id=snapshot_id,
            training_rows=len(train_rows),
            feature_order=list(s.feature_columns),
            label_names=list(s.label_names),
        )
        for c in candidates
    ]
    winner = best(candidates, s.promotion_metric)
    version = registered[candidates.index(winner)].version
    try:
        champion = model_registry.get_version(s)
    except LookupError:
        champion = None
    champion_score = None
    if champion is not None:
        champion_model = model_registry.load_model(model_registry.model_ref(champion))
        champion_score = evaluate(s, champion_model, holdout)[s.promotion_metric]
    decision, reason = decide(s, winner.metrics[s.promotion_metric], champion_score)
    model_registry.record_decision(s, decision, version, reason)
    return RetrainResult(
        snapshot_id=snapshot_id,
        training_rows=len(train_rows),
        holdout_rows=len(holdout),
        candidates=[
            {
                "version": r.version,
                "family": c.family,
                "params": c.params,
                "accuracy": c.metrics["accuracy"],
                "macro_f1": c.metrics["macro_f1"],
            }
            for r, c in zip(registered, candidates, strict=True)
        ],
        best_version=version,
        best_metrics=winner.metrics,
        champion_before=champion.version if champion else None,
        champion_score=champion_score,
        decision=decision,
        reason=reason,
        drift=_drift(s, frame, champion),
    )
