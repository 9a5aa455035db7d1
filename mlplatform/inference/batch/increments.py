"""Incremental batch inference: a run that predicts only the rows appended since the last run of
its lineage (the same dataset, model, row filter and predictor).

The features table is append-only (Flink appends data files; only table maintenance rewrites
them, keeping their rows), so the rows appended after snapshot B are exactly those of the data
files that the new snapshot has and B had not. A run records B as `since_snapshot_id`; chained
runs then predict each row once across runs, with the checkpoints of each run as before.
Rules, each reported as the run's basis:
- no earlier run of the lineage (a first run, or a new model version under the "full" policy):
  every row of the snapshot;
- the lineage's newest run did not finish (killed, or failed): it is continued first (its
  failed units tried again), never a second range beside it, so no row is predicted twice; the
  next run continues from its snapshot;
- a compaction by table maintenance since B replaced files by files of the same rows; when
  it merged only files B had (maintenance's rule for active lineages), its new files count
  as B's, else every row is predicted again;
- B's files are otherwise not all in the new snapshot (an overwrite, a delete, or B
  expired): rows may have changed, so every row of the snapshot is predicted again;
- nothing appended since B: a run with no units.
A run pinned to a snapshot (the flow's snapshot_id) predicts every row of it and is no step of
the chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pyiceberg.manifest import ManifestEntryStatus
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot, ancestors_of

from checkpoints.store import CheckpointStore, Run
from mlplatform.connectors.iceberg_tables import merged_sequence
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


def _after(table: Table, since: int, until: int) -> list[Snapshot] | None:
    """The snapshots after `since` in `until`'s ancestry, up to `until` (None: `since` is no
    ancestor of `until`)."""
    chain: list[Snapshot] = []
    for snapshot in ancestors_of(table.snapshot_by_id(until), table.metadata):
        if snapshot.snapshot_id == since:
            return chain[::-1]
        chain.append(snapshot)
    return None


def _compacted(table: Table, snapshot: Snapshot) -> tuple[set[str], set[str]]:
    """The data files a compaction snapshot removed and those it added."""
    removed, added = set(), set()
    for manifest in snapshot.manifests(table.io):
        if manifest.added_snapshot_id != snapshot.snapshot_id:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
            if entry.status == ManifestEntryStatus.DELETED:
                removed.add(entry.data_file.file_path)
            elif entry.status == ManifestEntryStatus.ADDED:
                added.add(entry.data_file.file_path)
    return removed, added


def increment(table: Table, previous: Run | None, snapshot_id: int) -> Increment:
    """What a new run over `snapshot_id` covers after the lineage's finished run `previous`."""
    if previous is None:
        return Increment(None, frozenset(), "every row: no earlier run of this model and input")
    since = previous.snapshot_id
    base = table.snapshot_by_id(since)
    if base is None:
        return Increment(None, frozenset(), f"every row: snapshot {since} of the last run expired")
    before, now = set(data_files(table, since)), data_files(table, snapshot_id)
    compactions = 0
    for snapshot in _after(table, since, snapshot_id) or []:
        merged = merged_sequence(snapshot)
        if merged is None:
            continue
        if merged > (base.sequence_number or 0):
            return Increment(
                None,
                frozenset(),
                f"every row: compaction {snapshot.snapshot_id} merged files appended after "
                f"snapshot {since} (the last run's) with older ones",
            )
        removed, added = _compacted(table, snapshot)
        before = (before - removed) | added  # the same rows, all predicted already
        compactions += 1
    if not before <= now:
        gone = len(before - now)
        return Increment(
            None,
            frozenset(),
            f"every row: {gone} data file(s) of snapshot {since} (the last run's) were rewritten "
            "or removed since (an overwrite or a delete)",
        )
    added_files = len(now - before)
    basis = f"the rows of {added_files} data file(s) appended after snapshot {since}"
    if compactions:
        basis += f" ({compactions} compaction(s) since, of rows predicted already)"
    return Increment(since, frozenset(before), basis)
