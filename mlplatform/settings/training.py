"""Settings of training: the candidate grid, the split, promotion, drift and retraining."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TrainingSettings(BaseModel):
    """Which candidates are trained, how they are scored, and when a new one takes over."""

    # The candidate grid, trained in parallel on Ray.
    candidate_grid: list[dict[str, Any]] = Field(
        default=[
            {"family": "decision_tree", "max_depth": 2},
            {"family": "decision_tree", "max_depth": 4},
            {"family": "random_forest", "n_estimators": 50, "max_depth": 3},
            {"family": "random_forest", "n_estimators": 100, "max_depth": 6},
            {"family": "logistic_regression", "C": 1.0},
        ]
    )
    # Training reads at most this many rows of the pinned snapshot: a sample stratified by label
    # and seeded by `seed`, taken before the train/holdout split (mlplatform.training.sample).
    training_sample_rows: int = Field(default=200_000, ge=10)
    holdout_fraction: float = 0.25
    seed: int = 7
    promotion_metric: str = "macro_f1"
    # A candidate is promoted when its score >= the champion's score on the same holdout - margin.
    promotion_margin: float = 0.0
    drift_bins: int = 10
    drift_psi_threshold: float = 0.2
    # The preprocess flow asks for a retrain when this many rows arrived since the champion's data.
    retrain_min_new_rows: int = 5000
    # One retrain at a time: a run holds a lease in the platform database, renewed every quarter
    # of this; a run whose process died gives it up after this long without a heartbeat.
    retrain_lease_ttl_s: float = Field(default=120.0, gt=0)
    # Stream consumers and Serve replicas check this often whether a new champion was promoted.
    model_refresh_s: float = 5.0
