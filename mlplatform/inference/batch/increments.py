"""Incremental batch inference: a run that predicts only the rows appended since the last run of
its lineage (the same dataset, model, row filter and predictor).

The features table is append-only (Flink appends data files; nothing rewrites them), so the
rows appended after snapshot B are exactly those of the data files that the new snapshot has
and B had not. A run records B as `since_snapshot_id`; chained runs then predict each row once
across runs, with the checkpoints of each run as before. Rules, each reported as the run's basis:
- no earlier run of the lineage (a first run, or a new model version under the "full" policy):
  every row of the snapshot;
- the lineage's newest run did not finish (killed, or failed): it is continued first (its
  failed units tried again), never a second range beside it, so no row is predicted twice; the
  next run continues from its snapshot;
- B's files are not all in the new snapshot (an overwrite, a delete, a compaction, or B
  expired): rows may have changed, so every row of the snapshot is predicted again;
- nothing appended since B: a run with no units.
A run pinned to a snapshot (the flow's snapshot_id) predicts every row of it and is no step of
the chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pyiceberg.table import Table

from checkpoints.store import CheckpointStore, Run
from mlplatform.settings import Settings

UNFINISHED = ("running", "failed")


@dataclass(frozen=True)
class Increment:
    """What a new run covers: the rows appended after since_snapshot_id (None: every row), the
    data files it skips (those of since_snapshot_id), and why."""

    since_snapshot_id: int | None
    skip_files: frozenset[str]
    basis: str


def lineage_key(dataset: str, model: str, row_filter: str | None, predictor: str | None) -> str:
    text = f"batch-inference|{dataset}|{model}|{row_filter or ''}|{predictor or ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def previous_run(
    s: Settings, store: CheckpointStore, lineage: str, model_version: int
) -> Run | None:
    """The lineage's newest run: of this model version, or of any version of the model when
    MLP_INCREMENTAL_NEW_MODEL is "continue" (a new champion predicts only the new rows)."""
    same_version = s.incremental_new_model == "full"
    return store.latest_of_lineage(lineage, model_version if same_version else None)


def data_files(table: Table, snapshot_id: int) -> frozenset[str]:
    return frozenset(
        task.file.file_path for task in table.scan(snapshot_id=snapshot_id).plan_files()
    )


def increment(table: Table, previous: Run | None, snapshot_id: int) -> Increment:
    """What a new run over `snapshot_id` covers after the lineage's finished run `previous`."""
    if previous is None:
        return Increment(None, frozenset(), "every row: no earlier run of this model and input")
    since = previous.snapshot_id
    if table.snapshot_by_id(since) is None:
        return Increment(None, frozenset(), f"every row: snapshot {since} of the last run expired")
    before, now = data_files(table, since), data_files(table, snapshot_id)
    if not before <= now:
        gone = len(before - now)
        return Increment(
            None,
            frozenset(),
            f"every row: {gone} data file(s) of snapshot {since} (the last run's) were rewritten "
            "or removed since (an overwrite, a delete or a compaction)",
        )
    added = len(now - before)
    return Increment(
        since, before, f"the rows of {added} data file(s) appended after snapshot {since}"
    )
