"""Settings of the Flink preprocessing job: where it runs, its checkpoints, windows and limits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import BaseModel, Field, model_validator

from mlplatform.settings.services import PROJECT_DIR

if TYPE_CHECKING:
    from mlplatform.dataset.spec import DatasetSpec


class FlinkSettings(BaseModel):
    """How the Flink job is run, how stream mode commits, and what it counts per window."""

    if TYPE_CHECKING:  # from LakeSettings
        dataset: str
        label_column: str

        @property
        def dataset_spec(self) -> DatasetSpec: ...

    # The PyFlink environment the job runs in.
    flink_python: Path = PROJECT_DIR / ".venv-flink" / "bin" / "python"
    # "local": PyFlink's mini-cluster, started per job; "session": the job is submitted to the
    # session cluster at flink_rest_url (python -m infra.flink_cluster up starts one).
    flink_parallelism: int = 1
    flink_mode: Literal["local", "session"] = "local"
    flink_rest_url: str = "http://127.0.0.1:8081"
    # The session cluster's TaskManagers (infra/flink_cluster.py). A job with parallelism 1 runs
    # on one; the second stands by, so that when the first dies the job restarts at once
    # rather than after a new TaskManager has started (seconds; docs/streaming.md).
    flink_taskmanagers: int = Field(default=2, ge=1)
    # Stream mode (always on the session cluster) runs two jobs on the raw events, each
    # resuming from its own checkpoints, and from a savepoint after a stop
    # (mlplatform/preprocess/stream.py). The real-time job (the topics) checkpoints its source
    # position and event ids every flink_checkpoint_interval_s: shorter, a lost TaskManager's
    # job replays less and an exactly-once row is visible sooner. The lake job (the Iceberg
    # tables) commits on its checkpoints, every flink_lake_commit_interval_s: longer, fewer
    # snapshots and files; shorter, the tables are fresher.
    flink_checkpoint_interval_s: float = 2.0
    flink_lake_commit_interval_s: float = 60.0
    # Stream mode remembers each event id this long (processing time) to quarantine a repeat as
    # duplicate_key; an id seen again later is written again. Its keyed state: "hashmap" keeps
    # the ids on the TaskManager's heap (a few hundred bytes each; every checkpoint copies
    # them all), "rocksdb" on its disk with incremental checkpoints (for horizons of hours, at
    # a lower sustained rate; docs/preprocessing.md).
    flink_dedup_horizon_s: float = Field(default=600.0, gt=0)
    flink_state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    # The longest a stream-mode row waits in a source fetch or a network buffer (latency vs CPU).
    flink_stream_flush_ms: int = 10
    # Stream mode's Pulsar sinks. "at-least-once" (the real-time default): rows are visible on
    # the topics as soon as sent; after a failure the job publishes again what it had sent since
    # its last checkpoint, each features message naming the raw event it came from, and the
    # stream consumers drop those repeats, so predictions stay exactly once (docs/streaming.md;
    # needs flink_parallelism 1). "exactly-once": each checkpoint's rows are published in a
    # Pulsar transaction, committed when the checkpoint completes; consumers see them then (up
    # to one checkpoint interval later), and no repeat ever reaches the topics.
    flink_stream_delivery: Literal["exactly-once", "at-least-once"] = "at-least-once"
    # A transaction a failed task left open is aborted by the broker after this long; until
    # then it holds back the topic's later messages from consumers. Longer than a checkpoint.
    flink_transaction_timeout_s: float = 60.0
    # Per-key counts and means over tumbling event-time windows (the feature_windows table),
    # keyed by window_key (default: the label); events later than the watermark delay are
    # not counted.
    feature_window_s: int = 60
    watermark_delay_s: int = 5
    window_key: str | None = None
    # A raw line longer than this (in bytes) is quarantined as oversized_payload, its first
    # max_line_bytes characters kept; the cap keeps that within a Pulsar message (5 MB).
    max_line_bytes: int = Field(default=16_384, gt=0, le=1_048_576)
    # Batch mode's replay check looks for a row's event id among the features of the last
    # replay_window_days days (by event date) only, so its cost follows the window, not the lake;
    # a row whose own event date is older is quarantined as outside_replay_window (flink_job.py).
    replay_window_days: int = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _transactions_outlive_checkpoints(self) -> Self:
        if self.flink_transaction_timeout_s < 3 * self.flink_checkpoint_interval_s:
            raise ValueError(
                f"MLP_FLINK_TRANSACTION_TIMEOUT_S ({self.flink_transaction_timeout_s:g}) must be "
                "at least 3 times MLP_FLINK_CHECKPOINT_INTERVAL_S "
                f"({self.flink_checkpoint_interval_s:g}): a transaction stays open from one "
                "checkpoint to the next, and one that times out loses its rows"
            )
        return self

    @property
    def resolved_window_key(self) -> str:
        """The feature_windows table's key column: window_key, checked against the dataset."""
        key = self.window_key or self.label_column
        columns = self.dataset_spec.columns
        if key not in columns:
            raise ValueError(
                f"window_key {key!r} is no column of dataset {self.dataset}: "
                f"use one of {', '.join(columns)}"
            )
        return key
