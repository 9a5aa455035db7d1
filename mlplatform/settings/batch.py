"""Settings of batch inference: the mode, the actor pool, units of work and commits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class BatchSettings(BaseModel):
    """How batch inference splits a run into units, scores them on Ray and commits them."""

    # Protocol: checkpoints. fused: the model in a warm pool of Ray actors; separated: the model in
    # a Ray Serve deployment called through a handle.
    batch_mode: Literal["fused", "separated"] = "fused"
    # Rows per model call: large enough that a forest's per-call cost is small (a unit's rows).
    batch_size: int = 20_000
    # The unit stage: Ray Data actors (actor_pool_min..max, each holding actor_num_cpus while
    # a run lasts) that hand units to the model's warm pool, where each is read, predicted and
    # written (inference/batch/model_pool.py): pool_size actors per model that outlive runs
    # (fused; the Serve application in separated mode, the units read and written in the unit
    # stage), gone after pool_idle_s without a call. With a user preprocessor: read tasks
    # (reader_num_cpus) -> preprocessing actors -> model-stage actors (the same settings).
    actor_pool_min: int = 1
    actor_pool_max: int = 2
    actor_num_cpus: float = 0.5
    actor_num_gpus: float = 0.0
    pool_size: int = Field(default=2, ge=1)
    pool_idle_s: float = Field(default=600.0, gt=0)
    reader_num_cpus: float = 0.25
    # Niceness of batch inference's Ray Data workers. None: Ray's (15, below every other process
    # on the node, which suits a shared node); 0: level with them (needs root or CAP_SYS_NICE).
    batch_niceness: int | None = None
    # A unit of work: consecutive Parquet row groups of one data file, up to this many rows.
    unit_rows: int = 20_000
    # Complete units are committed to Iceberg together every this many rows or seconds, and at
    # the latest every commit_every_fraction of the run's rows (what a crash may recompute).
    commit_every_rows: int = 100_000
    commit_every_fraction: float = Field(default=1.0, gt=0, le=1)
    commit_every_s: float = 10.0
    # Per batch_size rows of a unit; a unit's wait is that times actor_pool_max (other units
    # may be queued before it at its pool actor).
    batch_timeout_s: float = 60.0
    # A run fails (and can be resumed) when Ray Data returns nothing for this long.
    stall_timeout_s: float = 300.0
    unit_max_attempts: int = 3
    # The run fails when more than this fraction of the input rows is in units that failed.
    max_failed_fraction: float = 0.0
    # A run's lease is taken over when its holder's heartbeat is older than this.
    lease_ttl_s: float = 30.0
    # Incremental runs (the flow's `incremental`; inference/batch/increments.py) after a new model
    # version: "full" predicts every row again with it; "continue" only the rows appended since
    # the model's last run (earlier rows keep the earlier version's predictions).
    incremental_new_model: Literal["full", "continue"] = "full"
