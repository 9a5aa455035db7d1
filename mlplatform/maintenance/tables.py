"""Table maintenance for the lake: compaction of small data files, expiry of old snapshots and
removal of orphan files, for the features, predictions, stream-predictions and windows tables.

Every reader sees the same rows before and after: a compaction is one Iceberg snapshot that
replaces a partition's small files (size-tiered: `compaction_groups`) by files with the same
rows (read through the table's current schema, so files from before a schema change are carried
over with nulls). The rules that keep the platform's exactly-once marks and resumes intact:

- compaction commits carry no marks and no batch-run keys, so they never count as a writer's
  commit. The stream committer's high-water marks live in its own snapshots (each one carries
  them all), and the newest snapshot that carries marks is never expired;
- a batch run's units name the data files of its snapshot; the snapshot of every unfinished run
  is kept, so are its files;
- incremental batch inference predicts the files a lineage has not seen. A compaction of the
  features table merges only files that every lineage active within `maintenance_lineage_days`
  has predicted already (data sequence number at most that of the lineage's newest run's
  snapshot), and records the highest sequence number it merged, so the next incremental run
  knows the new file holds only rows it has (increments.py); the snapshots those runs name, and
  all newer ones, are kept;
- expiry takes only snapshots older than `snapshot_retention_hours` and older than every kept
  one (never the current one); orphan removal only files that no retained snapshot references
  and that are older than `orphan_min_age_hours` (a younger one may be an uncommitted write).

A run's cost follows what is new, not the lake: on a table partitioned by a date (the features
table, by `event_date`), the nightly run works on the partitions of the last
`maintenance_window_days` only (`Window`). It reads the manifests whose partition ranges reach
into the window (manifest pruning: Iceberg's partition summaries) and lists the window's
partition folders and the metadata folder; a whole-table run (`full`, weekly by default) does
the rest: small files of older partitions (late data) and orphans there. Unpartitioned tables
are always maintained whole.
A compaction that loses the commit race to another writer (the stream committer, a batch commit,
Flink) is planned again on the new state. Maintenance runs of one namespace must not overlap
(the flow holds a concurrency slot).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow.fs as pafs
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, GreaterThanOrEqual
from pyiceberg.expressions.visitors import (
    expression_evaluator,
    inclusive_projection,
    manifest_evaluator,
)
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.manifest import ManifestContent, ManifestEntry, ManifestFile
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import DateType

from checkpoints.store import CheckpointStore
from mlplatform.connectors.iceberg_tables import compaction_summary, ensure_tables
from mlplatform.inference.batch.commit import RUN_KEY
from mlplatform.inference.stream.committer import snapshot_marks
from mlplatform.settings import Settings

logger = logging.getLogger(__name__)

COMMIT_TRIES = 10
TARGET_FILE_SIZE = "write.target-file-size-bytes"
# Manifest lists and manifests read and kept per process, at most (then forgotten at once).
CACHED_FILES = 4096
_MANIFESTS: dict[str, list[ManifestFile]] = {}
_ENTRIES: dict[str, list[ManifestEntry]] = {}
# Size tiers of compaction: files up to 1 MiB, then each factor of 4.
TIER_BASE_BYTES, TIER_FACTOR = 1 << 20, 4
# PyIceberg checks a rewrite (an overwrite of listed files) under its delete isolation level.
REWRITE_ISOLATION = {
    "write.delete.isolation-level": "snapshot",
    "write.update.isolation-level": "snapshot",
}


@dataclass(frozen=True)
class TableReport:
    """What maintenance did to one table."""

    table: str
    scope: str
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    files_compacted: int
    snapshots_expired: int
    orphans_removed: int
    seconds: float

    def as_row(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Holds:
    """What a table's readers still need: snapshots to keep (with every newer one), and the
    highest data sequence number a compaction may merge (None: any)."""

    keep_from: list[int]
    max_sequence: int | None = None


@dataclass(frozen=True)
class Window:
    """The partitions a nightly run works on: those of date column `column` from `start` on
    (an identity partition, in the Hive-style folders `<column>=<date>` that PyIceberg and
    Flink write)."""

    column: str
    start: date

    @property
    def row_filter(self) -> BooleanExpression:
        return GreaterThanOrEqual(self.column, self.start.isoformat())

    def holds_folder(self, name: str) -> bool:
        """Whether data/<name> is one of the window's partition folders."""
        column, _, value = name.partition("=")
        try:
            return column == self.column and date.fromisoformat(value) >= self.start
        except ValueError:
            return False

    def describe(self) -> str:
        return f"{self.column} >= {self.start.isoformat()}"


def window_of(table: Table, days: int | None, today: date | None = None) -> Window | None:
    """The table's window of the last `days` days: its first identity partition on a date
    column; None (the whole table) when `days` is None or the table has no such partition."""
    if days is None:
        return None
    schema = table.schema()
    for field in table.spec().fields:
        source = schema.find_field(field.source_id)
        if isinstance(field.transform, IdentityTransform) and isinstance(
            source.field_type, DateType
        ):
            return Window(source.name, (today or datetime.now(UTC).date()) - timedelta(days=days))
    return None


def _remembered(cache: dict[str, Any], key: str, read: Callable[[], Any]) -> Any:
    if key not in cache:
        if len(cache) >= CACHED_FILES:
            cache.clear()
        cache[key] = read()
    return cache[key]


def forget_metadata() -> None:
    """Drop the manifests this process has read (as a fresh process starts)."""
    _MANIFESTS.clear()
    _ENTRIES.clear()


def manifests_of(table: Table, snapshot: Snapshot) -> list[ManifestFile]:
    """The snapshot's manifests. Manifest lists and manifests are immutable files, so each is
    read once per process: a run's passes (plan, orphans, counts) cost one read of the
    metadata, not one per pass."""
    return _remembered(_MANIFESTS, snapshot.manifest_list, lambda: snapshot.manifests(table.io))


def _live_entries_of(table: Table, manifest: ManifestFile) -> list[ManifestEntry]:
    return _remembered(
        _ENTRIES,
        manifest.manifest_path,
        lambda: manifest.fetch_manifest_entry(table.io, discard_deleted=True),
    )


class _Pruner:
    """Which manifests and entries may hold rows of `row_filter`: manifests by their partition
    summaries, entries by their partition values (per partition spec)."""

    def __init__(self, table: Table, row_filter: BooleanExpression) -> None:
        self.table, self.row_filter = table, row_filter
        self._manifests: dict[int, Callable[[ManifestFile], bool]] = {}
        self._entries: dict[int, Callable[[Any], bool]] = {}

    def _build(self, spec_id: int) -> None:
        schema, spec = self.table.schema(), self.table.specs()[spec_id]
        projected = inclusive_projection(schema, spec)(self.row_filter)
        self._manifests[spec_id] = manifest_evaluator(spec, schema, projected)
        partition_schema = Schema(*spec.partition_type(schema).fields)
        self._entries[spec_id] = expression_evaluator(partition_schema, projected, True)

    def manifest(self, manifest: ManifestFile) -> bool:
        if manifest.partition_spec_id not in self._manifests:
            self._build(manifest.partition_spec_id)
        return self._manifests[manifest.partition_spec_id](manifest)

    def entry(self, spec_id: int, entry: ManifestEntry) -> bool:
        return self._entries[spec_id](entry.data_file.partition)


def live_entries(
    table: Table, snapshot: Snapshot | None = None, window: Window | None = None
) -> list[ManifestEntry]:
    """The live data-file entries of `snapshot` (default: the current one); with a window,
    those of the window's partitions, read from the manifests that reach into it."""
    snapshot = snapshot or table.current_snapshot()
    if snapshot is None:
        return []
    manifests = manifests_of(table, snapshot)
    if window is None:
        return [entry for manifest in manifests for entry in _live_entries_of(table, manifest)]
    pruner = _Pruner(table, window.row_filter)
    return [
        entry
        for manifest in manifests
        if pruner.manifest(manifest)
        for entry in _live_entries_of(table, manifest)
        if pruner.entry(manifest.partition_spec_id, entry)
    ]


def _has_delete_files(table: Table) -> bool:
    snapshot = table.current_snapshot()
    manifests = manifests_of(table, snapshot) if snapshot else []
    return any(m.content == ManifestContent.DELETES for m in manifests)


def size_tier(size: int) -> int:
    """0 for files up to TIER_BASE_BYTES, then one more per factor of TIER_FACTOR: tier n
    holds sizes in (base * factor**(n-1), base * factor**n]."""
    tier, bound = 0, TIER_BASE_BYTES
    while size > bound:
        tier, bound = tier + 1, bound * TIER_FACTOR
    return tier


def compaction_groups(
    entries: list[ManifestEntry],
    small_bytes: int,
    max_sequence: int | None,
    group_bytes: int,
    min_files: int = 2,
) -> list[list[ManifestEntry]]:
    """The small files to merge, size-tiered: per partition (and spec) and size tier, when the
    tier holds at least `min_files` files, in groups of at most `group_bytes` (each group
    becomes one new file: this also bounds the memory a rewrite takes), oldest first. Only files
    at or below `max_sequence` (None: any). A merged file joins a higher tier, so a run merges
    what is new rather than rewriting its merged files again, and each row is rewritten at most
    once per tier."""
    tiers: dict[tuple[int, str, int], list[ManifestEntry]] = defaultdict(list)
    for entry in entries:
        file = entry.data_file
        sequence = entry.sequence_number or 0
        if file.file_size_in_bytes < small_bytes and (
            max_sequence is None or sequence <= max_sequence
        ):
            key = (file.spec_id, repr(file.partition), size_tier(file.file_size_in_bytes))
            tiers[key].append(entry)
    groups: list[list[ManifestEntry]] = []
    for files in tiers.values():
        if len(files) < min_files:
            continue
        group: list[ManifestEntry] = []
        for entry in sorted(files, key=lambda e: e.sequence_number or 0):
            size = sum(e.data_file.file_size_in_bytes for e in group)
            if group and size + entry.data_file.file_size_in_bytes > group_bytes:
                groups.append(group)
                group = []
            group.append(entry)
        groups.append(group)
    return [group for group in groups if len(group) > 1]


def _compact_once(table: Table, groups: list[list[ManifestEntry]]) -> int:
    """One snapshot that replaces each group by its rows in new files; the files replaced."""
    merged = max(entry.sequence_number or 0 for group in groups for entry in group)
    summary = compaction_summary(merged)
    with table.transaction() as transaction:
        metadata = transaction.table_metadata
        schema = metadata.schema()
        # One file per group and partition: PyIceberg's writer would split a group by its
        # in-memory size (write.target-file-size-bytes), into files that are small again on disk.
        whole = {**metadata.properties, TARGET_FILE_SIZE: str(1 << 62)}
        one_file = metadata.model_copy(update={"properties": whole})
        with transaction.update_snapshot(snapshot_properties=summary).overwrite() as rewrite:
            for group in groups:
                tasks = [FileScanTask(entry.data_file) for entry in group]
                data = ArrowScan(metadata, table.io, schema, AlwaysTrue()).to_table(tasks)
                for entry in group:
                    rewrite.delete_data_file(entry.data_file)
                for file in _dataframe_to_data_files(one_file, data, table.io, rewrite.commit_uuid):
                    rewrite.append_data_file(file)
    return sum(len(group) for group in groups)


def rewrites_beside_appends(table: Table) -> Table:
    """Let a rewrite commit beside appends made since it started (snapshot isolation for
    overwrites and deletes, which only compaction makes on these tables): serializable would
    refuse it whenever the stream committer, a batch commit or Flink appended meanwhile. A
    rewrite whose input files are gone still fails."""
    if any(table.properties.get(k) != v for k, v in REWRITE_ISOLATION.items()):
        with table.transaction() as transaction:
            transaction.set_properties(REWRITE_ISOLATION)
        table = table.refresh()
    return table


def _until_committed(
    what: str, table: Table, step: Callable[[Table], tuple[Table, int]]
) -> tuple[Table, int]:
    """`step` (plan on the table as it is, then commit), planned again on the new state after
    a commit race lost to another writer."""
    for attempt in range(COMMIT_TRIES):
        try:
            return step(table)
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
            table = table.refresh()
    raise CommitFailedException(f"{what} lost {COMMIT_TRIES} commit races in a row")


def compact(
    table: Table,
    small_bytes: int,
    max_sequence: int | None,
    group_bytes: int,
    min_files: int = 2,
    window: Window | None = None,
) -> tuple[Table, int]:
    """Compact the table's small files, of the window's partitions only when one is given (see
    the module's rules); (the table, files replaced). Lost commit races are planned again on
    the new state."""
    if _has_delete_files(table):
        return table, 0  # row-level deletes: left to an engine that applies them
    table = rewrites_beside_appends(table)

    def step(table: Table) -> tuple[Table, int]:
        entries = live_entries(table, window=window)
        groups = compaction_groups(entries, small_bytes, max_sequence, group_bytes, min_files)
        if not groups:
            return table, 0
        replaced = _compact_once(table, groups)
        return table.refresh(), replaced

    return _until_committed("compaction", table, step)


def _expired(table: Table, older_than: datetime, keep_from: list[int]) -> list[int]:
    """The snapshots `expire` takes on the table as it is now."""
    cutoff_ms = older_than.timestamp() * 1000
    kept = [table.snapshot_by_id(i) for i in keep_from]
    with_marks = [s for s in table.snapshots() if snapshot_marks(s)]
    if with_marks:
        kept.append(max(with_marks, key=lambda s: s.timestamp_ms))
    for snapshot in kept:
        if snapshot is not None:
            cutoff_ms = min(cutoff_ms, snapshot.timestamp_ms)
    current = table.metadata.current_snapshot_id
    return [
        s.snapshot_id
        for s in table.snapshots()
        if s.timestamp_ms < cutoff_ms and s.snapshot_id != current
    ]


def expire(table: Table, older_than: datetime, keep_from: list[int]) -> tuple[Table, int]:
    """Expire snapshots older than `older_than` and older than every snapshot in `keep_from`
    (ids the table no longer has are ignored), never the current one nor the newest that
    carries stream marks; (the table, snapshots expired). A lost commit race is tried again."""

    def step(table: Table) -> tuple[Table, int]:
        old = _expired(table, older_than, keep_from)
        if not old:
            return table, 0
        table.maintenance.expire_snapshots().by_ids(old).commit()
        return table.refresh(), len(old)

    return _until_committed("snapshot expiry", table, step)


def referenced_files(table: Table, window: Window | None = None) -> set[str]:
    """Every file a retained snapshot needs: manifest lists, manifests and live data files (with
    a window: only the data files of the window's partitions)."""
    pruner = _Pruner(table, window.row_filter) if window else None
    paths: set[str] = set()
    for snapshot in table.snapshots():
        paths.add(snapshot.manifest_list)
        for manifest in manifests_of(table, snapshot):
            if manifest.manifest_path in paths:  # shared with a newer snapshot: done
                continue
            paths.add(manifest.manifest_path)
            if pruner is not None and not pruner.manifest(manifest):
                continue
            for entry in _live_entries_of(table, manifest):
                if pruner is None or pruner.entry(manifest.partition_spec_id, entry):
                    paths.add(entry.data_file.file_path)
    return paths


def _normalised(path: str) -> str:
    return path.removeprefix("file://").removeprefix("file:")


def _candidate_folders(filesystem: pafs.FileSystem, root: str, window: Window | None) -> list[str]:
    """Where orphans are looked for: the metadata folder and the data folder, or with a window
    the metadata folder and the window's partition folders."""
    if window is None:
        return [f"{root}/metadata", f"{root}/data"]
    selector = pafs.FileSelector(f"{root}/data", allow_not_found=True)
    partitions = [
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.Directory and window.holds_folder(info.base_name)
    ]
    return [f"{root}/metadata", *partitions]


def remove_orphans(table: Table, older_than: datetime, window: Window | None = None) -> int:
    """Delete the data files and manifests under the table's location (with a window: the
    metadata folder and the window's partition folders) that no retained snapshot references
    and that were last modified before `older_than`; the number deleted."""
    referenced = {_normalised(p) for p in referenced_files(table, window)}
    filesystem, root = pafs.FileSystem.from_uri(table.location())
    removed = 0
    for folder in _candidate_folders(filesystem, root, window):
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        for info in filesystem.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.path.endswith((".parquet", ".avro")):
                continue
            if _normalised(info.path) in referenced or info.mtime is None:
                continue
            if info.mtime.replace(tzinfo=info.mtime.tzinfo or UTC) >= older_than:
                continue
            filesystem.delete_file(info.path)
            removed += 1
    return removed


def holds(s: Settings, name: str, table: Table, store: CheckpointStore) -> Holds:
    """What the checkpointed batch runs still need of table `name` (module's rules): of the
    features table, the snapshots of unfinished runs and of each recent lineage's newest run,
    whose lowest sequence number bounds compaction; of the predictions table, the snapshots
    that unfinished runs committed."""
    since = datetime.now(UTC) - timedelta(days=s.maintenance_lineage_days)
    unfinished, heads = store.runs_holding(s.table_id(s.features_table), since)
    if name == s.features_table:
        sequences = [
            snapshot.sequence_number or 0
            for run in heads
            if (snapshot := table.snapshot_by_id(run.snapshot_id)) is not None
        ]
        keep = [run.snapshot_id for run in [*unfinished, *heads]]
        return Holds(keep, min(sequences, default=None))
    if name == s.predictions_table:
        runs = {run.run_id for run in unfinished}
        return Holds(
            [
                snapshot.snapshot_id
                for snapshot in table.snapshots()
                if (summary := snapshot.summary) is not None and summary.get(RUN_KEY) in runs
            ]
        )
    return Holds([])


def _files(table: Table) -> tuple[int, int]:
    """The table's data files and bytes: from the current snapshot's running totals (every
    writer here keeps them), else counted."""
    snapshot = table.current_snapshot()
    summary = snapshot.summary if snapshot is not None else None
    if summary is not None and "total-data-files" in summary and "total-files-size" in summary:
        return int(summary["total-data-files"]), int(summary["total-files-size"])
    entries = live_entries(table)
    return len(entries), sum(e.data_file.file_size_in_bytes for e in entries)


def maintain_table(
    s: Settings, name: str, store: CheckpointStore, catalog: Catalog, full: bool = False
) -> TableReport:
    """Compact, expire and clean one table (module's rules): the window's partitions of a
    date-partitioned table, or with `full` the whole table."""
    started = time.monotonic()
    table = catalog.load_table(s.table_id(name))
    window = None if full else window_of(table, s.maintenance_window_days or None)
    files_before, bytes_before = _files(table)
    table_holds = holds(s, name, table, store)
    table, compacted = compact(
        table,
        s.compaction_small_file_bytes,
        table_holds.max_sequence,
        s.compaction_group_bytes,
        s.compaction_min_files,
        window,
    )
    now = datetime.now(UTC)
    retention = timedelta(hours=s.snapshot_retention_hours)
    table, expired = expire(table, now - retention, table_holds.keep_from)
    orphans = remove_orphans(table, now - timedelta(hours=s.orphan_min_age_hours), window)
    files_after, bytes_after = _files(table)
    return TableReport(
        s.table_id(name),
        window.describe() if window else "whole table",
        files_before,
        files_after,
        bytes_before,
        bytes_after,
        compacted,
        expired,
        orphans,
        round(time.monotonic() - started, 3),
    )


def maintained_tables(s: Settings) -> list[str]:
    return [
        s.features_table,
        s.predictions_table,
        s.stream_predictions_table,
        s.feature_windows_table,
    ]


def maintain(s: Settings, tables: list[str] | None = None, full: bool = False) -> list[TableReport]:
    """Maintain the lake's tables (default: features, predictions, stream predictions,
    windows), one after another; `full`: whole tables, not the window's partitions."""
    store, catalog = CheckpointStore(s.resolved_database_url), ensure_tables(s)
    reports = []
    for name in tables or maintained_tables(s):
        report = maintain_table(s, name, store, catalog, full)
        logger.info("maintained %s: %s", report.table, report)
        reports.append(report)
    return reports
