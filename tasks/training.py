"""Prefect task around training, evaluation and registration."""

from __future__ import annotations

from prefect import task

from mlplatform.settings import Settings
from mlplatform.training import TrainingResult, train
from tasks.artifacts import publish_summary


@task(name="train-evaluate-register")
def train_model(settings: Settings, snapshot_id: int | None = None) -> TrainingResult:
    """Train on a pinned snapshot, evaluate on the holdout, register and maybe promote."""
    result = train(settings, snapshot_id)
    publish_summary("retrain-summary", "Training and promotion", result.as_dict())
    return result
