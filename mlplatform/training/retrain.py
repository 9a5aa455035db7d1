"""Retraining: a pinned Iceberg snapshot, a candidate grid on Ray, a promotion decision, drift.

Training reads a bounded, stratified, seeded sample of the snapshot (snapshot_sample), then
splits it into train and holdout. Every candidate is registered with its metrics and lineage
(snapshot, rows available and used, seed). The best one (by the configured metric) is compared
with the current champion on the same holdout and promoted only when it is not worse by more
than the configured margin; the decision and its reason are recorded. One retrain runs at a
time per platform database: a run holds the RETRAIN_LEASE, and a run that finds it held raises
RetrainInProgress before reading or training anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from checkpoints.leases import LeaseHeld, held_lease
from mlplatform.connectors.iceberg_tables import count_rows, load_table
from mlplatform.connectors.ray_runtime import connect
from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelVersion
from mlplatform.settings import Settings
from mlplatform.training.candidates import (
    Candidate,
    best,
    classification_metrics,
    train_grid_on_ray,
    train_grid_sequential,
)
from mlplatform.training.drift import drift_report
from mlplatform.training.snapshot_sample import TrainingSample, read_training_sample

RETRAIN_LEASE = "retrain"


class RetrainInProgress(RuntimeError):
    """Another retrain holds the lease: this one did not train."""


@dataclass(frozen=True)
class RetrainResult:
    snapshot_id: int
    training_rows: int
    holdout_rows: int
    rows_available: int  # rows of the snapshot
    rows_used: int  # rows sampled from it: training_rows + holdout_rows
    sample_seed: int
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
    """The training sample of a features table (default: the configured one) at one snapshot
    (default: the current one), ordered by key, and that snapshot's id."""
    sample = read_training_sample(s, snapshot_id, table_id)
    return sample.frame, sample.snapshot_id


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


def evaluate(
    s: Settings, model: object, holdout: pd.DataFrame, columns: list[str] | None = None
) -> dict[str, Any]:
    """The model's metrics on the holdout, fed as the platform feeds it: one float array of the
    features in `columns` order (a version's feature order; default the dataset's)."""
    x = holdout[columns or s.feature_columns].to_numpy(dtype=np.float64)
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


def against_champion(
    s: Settings, metrics: dict[str, Any], holdout: pd.DataFrame
) -> tuple[ModelVersion | None, float | None, str, str]:
    """The champion (None: none yet), its score on the same holdout, and the promotion rule's
    decision and reason for a candidate with these metrics."""
    try:
        champion = model_registry.get_version(s)
    except LookupError:
        champion = None
    champion_score = None
    if champion is not None:
        champion_model = model_registry.load_model(model_registry.model_ref(champion))
        order = list(champion.feature_order)
        champion_score = evaluate(s, champion_model, holdout, order)[s.promotion_metric]
    decision, reason = decide(s, metrics[s.promotion_metric], champion_score)
    return champion, champion_score, decision, reason


def _drift(s: Settings, current: TrainingSample, champion) -> list[dict[str, Any]]:
    if champion is None:
        return []
    # The champion's own training data, sampled alike: it may come from another table.
    reference, _ = read_snapshot(s, champion.training_snapshot_id, champion.training_table)
    return drift_report(
        reference, current.frame, s.feature_columns, s.drift_bins, s.drift_psi_threshold
    )


def retrain(
    s: Settings, snapshot_id: int | None = None, on_ray: bool = True, holder: str = "a retrain"
) -> RetrainResult:
    """Train the grid on a pinned snapshot, register every candidate, promote the best or not.

    Raises RetrainInProgress, having read nothing, when another retrain holds the lease;
    `holder` names this run in the refusal another one would get.
    """
    with one_at_a_time(s, holder) as still_held:
        return _retrain(s, snapshot_id, on_ray, still_held)


@contextmanager
def one_at_a_time(s: Settings, holder: str) -> Iterator[Callable[[], None]]:
    """Hold the RETRAIN_LEASE (retraining, importing a model) or raise RetrainInProgress; the
    check to call before registering or promoting (it raises when the lease was taken over)."""
    try:
        with held_lease(
            s.resolved_database_url, RETRAIN_LEASE, holder, s.retrain_lease_ttl_s
        ) as lease:
            yield lease.check
    except LeaseHeld as held:
        raise RetrainInProgress(
            f"not training: another retrain is running ({held}). One retrain at a time: its "
            "result covers this request when it read the same snapshot; run again after it "
            "if new rows arrived since it started."
        ) from held


def _retrain(
    s: Settings, snapshot_id: int | None, on_ray: bool, still_held: Callable[[], None]
) -> RetrainResult:
    sample = read_training_sample(s, snapshot_id)
    frame, snapshot_id = sample.frame, sample.snapshot_id
    if len(frame) < 10:
        raise ValueError(f"snapshot {snapshot_id} has {len(frame)} rows; at least 10 are needed")
    train_rows, holdout = split(s, frame)
    candidates = train_candidates(s, train_rows, holdout, on_ray)
    still_held()  # never register or promote beside a run that took over a stalled lease
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
            rows_available=sample.rows_available,
            rows_used=sample.rows_used,
            sample_seed=sample.seed,
            feature_order=list(s.feature_columns),
            label_names=list(s.label_names),
        )
        for c in candidates
    ]
    winner = best(candidates, s.promotion_metric)
    version = registered[candidates.index(winner)].version
    champion, champion_score, decision, reason = against_champion(s, winner.metrics, holdout)
    still_held()
    model_registry.record_decision(s, decision, version, reason)
    return RetrainResult(
        snapshot_id=snapshot_id,
        training_rows=len(train_rows),
        holdout_rows=len(holdout),
        rows_available=sample.rows_available,
        rows_used=sample.rows_used,
        sample_seed=sample.seed,
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
        drift=_drift(s, sample, champion),
    )
