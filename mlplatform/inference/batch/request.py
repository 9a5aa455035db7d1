"""What a batch inference run is asked to do: built once (by the flow, a test or a benchmark) and
handed down unchanged to the runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["fused", "separated"]


@dataclass(frozen=True, kw_only=True)
class BatchRequest:
    """Which rows to predict with which model, and how; every field defaults to the usual run.

    The fields are the batch-inference flow's parameters (their help is there), plus run_id.
    A resumed run (resume_run_id) keeps its own snapshot_id, model_version, row_filter and the
    snapshot it continued from.
    """

    resume_run_id: str | None = None
    model_version: int | None = None  # default: the champion
    snapshot_id: int | None = None  # default: the features table's latest
    row_filter: str | None = None  # an Iceberg filter; default: every row
    mode: Mode | None = None  # default: settings.batch_mode
    run_id: str | None = None  # the id a new run gets; default: a fresh one
    # Only the rows appended since the last run of the same model and input (increments.py).
    incremental: bool = False
