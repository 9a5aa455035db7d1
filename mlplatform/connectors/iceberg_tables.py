"""The Iceberg tables: one SQL catalog shared by PyIceberg (here) and Flink's JdbcCatalog."""

from __future__ import annotations

import contextlib
import threading
from functools import lru_cache

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update import update_table_metadata
from pyiceberg.types import (
    DateType,
    DoubleType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
)
from sqlalchemy.exc import OperationalError

from mlplatform.dataset.prediction_record import (
    CLASS_INDEX,
    INPUT_SNAPSHOT_ID,
    LABEL,
    MESSAGE_ID,
    MODEL_VERSION,
    PREDICTED_AT,
    PROBABILITIES,
    REASON,
    RENAMED,
    RUN_ID,
)
from mlplatform.settings import Settings


class _MetadataOnceTransaction(Transaction):
    """A transaction that computes its table metadata once per staged change.

    PyIceberg 0.12 (the newest release) recomputes `table_metadata`, a deep copy of the whole
    metadata with every snapshot, at each of its many reads in one append (one per data file in
    the snapshot summary: apache/iceberg-python#2673); its fix, caching it as here (#3302, #3784),
    was approved but is not released. A commit's CPU grew with the table's history: 397 -> 85
    ms at 300 snapshots, 106 -> 30 ms at 100 (benchmarks/iceberg_commits.py). Reads never change the
    metadata, and staged updates only ever grow, so their count keys the cache; with none
    staged it is the table's own metadata, uncopied."""

    _cached: tuple[tuple[int, int], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        if not self._updates:  # nothing staged: the table's own (immutable) metadata
            return self._table.metadata
        key = (id(self._table.metadata), len(self._updates))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, update_table_metadata(self._table.metadata, self._updates))
        return self._cached[1]


def transaction(table: Table) -> Transaction:
    """`table.transaction()` without its per-read copies of the metadata (above)."""
    return _MetadataOnceTransaction(table)


def catalog_properties(s: Settings) -> dict[str, str]:
    """PyIceberg's properties of the shared SQL catalog (Ray Data's read_iceberg takes them too)."""
    return {"type": "sql", "uri": s.resolved_catalog_url, "warehouse": s.resolved_warehouse}


_OPENING = threading.Lock()


@lru_cache
def _sql_catalog(name: str, uri: str, warehouse: str) -> Catalog:
    """Opening a new catalog creates its tables; a process that created them between this
    one's check and its own creation makes that fail ("already exists"): open it again."""
    try:
        return SqlCatalog(name, uri=uri, warehouse=warehouse)
    except OperationalError as error:
        if "already exists" not in str(error):
            raise
        return SqlCatalog(name, uri=uri, warehouse=warehouse)


def load_catalog(s: Settings) -> Catalog:
    """The catalog, opened once per process (each opening makes a new database engine)."""
    s.state_dir.mkdir(parents=True, exist_ok=True)
    if s.resolved_warehouse.startswith("file://"):
        (s.local_dir / "warehouse").mkdir(parents=True, exist_ok=True)
    with _OPENING:  # threads of one process open it once (lru_cache does not wait)
        return _sql_catalog(s.catalog_name, s.resolved_catalog_url, s.resolved_warehouse)


def _fields(*specs: tuple[str, object, bool]) -> Schema:
    return Schema(
        *(
            NestedField(field_id=i, name=name, field_type=kind, required=required)
            for i, (name, kind, required) in enumerate(specs, start=1)
        )
    )


def features_schema(s: Settings) -> Schema:
    """The dataset's columns, then what the job adds: when the row was written, its event time
    and date (the partition), and the dataset's derived features."""
    return _fields(
        (s.key_column, StringType(), False),
        *(
            (f.name, IntegerType() if f.type == "int" else DoubleType(), False)
            for f in s.dataset_spec.features
        ),
        (s.label_column, IntegerType(), False),
        *_added_features_columns(s),
    )


def _added_features_columns(s: Settings) -> list[tuple[str, IcebergType, bool]]:
    return [
        ("ingested_at", TimestampType(), False),
        ("event_time", TimestampType(), False),
        ("event_date", DateType(), False),
        *((d.name, DoubleType(), False) for d in s.dataset_spec.derived),
    ]


def ensure_features_layout(s: Settings, table: Table) -> None:
    """The features table's event-date partition (new tables too: the partition's source
    field id is known once the table exists); a table made before the job wrote event times
    or derived features gets those columns first (optional: older rows read null)."""
    present = {f.name for f in table.schema().fields}
    missing = [(name, kind) for name, kind, _ in _added_features_columns(s) if name not in present]
    if missing:
        with table.update_schema() as update:
            for name, kind in missing:
                update.add_column(name, kind, required=False)
    if table.spec().is_unpartitioned():
        with table.update_spec() as update:
            update.add_identity("event_date")


def quarantine_schema() -> Schema:
    return _fields(
        ("raw", StringType(), False),
        ("reason", StringType(), False),
        ("source", StringType(), False),
        ("quarantined_at", TimestampType(), False),
    )


def windows_schema(s: Settings) -> Schema:
    """Per window key and tumbling window: the valid rows' count and each feature's mean."""
    key = s.resolved_window_key
    return _fields(
        (key, features_schema(s).find_field(key).field_type, False),
        ("window_start", TimestampType(), False),
        ("window_end", TimestampType(), False),
        ("row_count", LongType(), False),
        *((f"mean_{name}", DoubleType(), False) for name in s.feature_columns),
    )


def counts_schema() -> Schema:
    return _fields(
        ("run_id", StringType(), False),
        ("outcome", StringType(), False),
        ("second", TimestampType(), False),
        ("row_count", LongType(), False),
    )


def _prediction_fields(s: Settings) -> list[tuple[str, IcebergType, bool]]:
    """The one prediction record's columns (see mlplatform.inference.predictions)."""
    probabilities = ListType(element_id=100, element_type=DoubleType(), element_required=True)
    return [
        (s.key_column, StringType(), True),
        (CLASS_INDEX, IntegerType(), True),
        (LABEL, StringType(), True),
        (PROBABILITIES, probabilities, True),
        (MODEL_VERSION, IntegerType(), True),
    ]


def predictions_schema(s: Settings) -> Schema:
    """Batch predictions: the prediction record (class, label and probabilities null on a refused
    row), why a row was refused, the run, and the input snapshot it read."""
    refusable = (CLASS_INDEX, LABEL, PROBABILITIES)
    return _fields(
        *(
            (name, kind, required and name not in refusable)
            for name, kind, required in _prediction_fields(s)
        ),
        (REASON, StringType(), False),
        (RUN_ID, StringType(), True),
        (INPUT_SNAPSHOT_ID, LongType(), True),
    )


def stream_predictions_schema(s: Settings) -> Schema:
    """Stream predictions: the prediction record, its input message, and when it was made."""
    return _fields(
        *_prediction_fields(s),
        (MESSAGE_ID, StringType(), True),
        (PREDICTED_AT, TimestampType(), True),
    )


def evolve_predictions_table(table: Table, schema: Schema) -> None:
    """Bring a predictions table made by an earlier release to `schema`, in place: renamed
    columns (prediction -> class_index, label_name -> label) keep their data, a column it
    lacks is added at its place in `schema` (optional: older rows read null), and a column that
    `schema` makes optional becomes optional. Idempotent."""
    names = [f.name for f in table.schema().fields]
    renames = {old: new for old, new in RENAMED.items() if old in names and new not in names}
    present = {renames.get(name, name) for name in names}
    missing = [f.name for f in schema.fields if f.name not in present]
    required = {renames.get(f.name, f.name) for f in table.schema().fields if f.required}
    loosen = [f.name for f in schema.fields if not f.required and f.name in required]
    if not renames and not missing and not loosen:
        return
    order = [f.name for f in schema.fields]
    old_name = {new: old for old, new in renames.items()}  # moves name columns as they were
    with table.update_schema() as update:
        for old, new in renames.items():
            update.rename_column(old, new)
        for name in loosen:
            update.make_column_optional(old_name.get(name, name))
        for name in missing:
            update.add_column(name, schema.find_field(name).field_type, required=False)
            at = order.index(name)
            if at == 0:
                update.move_first(name)
            else:
                update.move_after(name, old_name.get(order[at - 1], order[at - 1]))


def table_schemas(s: Settings) -> dict[str, Schema]:
    return {
        s.features_table: features_schema(s),
        s.quarantine_table: quarantine_schema(),
        s.feature_windows_table: windows_schema(s),
        s.preprocess_counts_table: counts_schema(),
        s.predictions_table: predictions_schema(s),
        s.stream_predictions_table: stream_predictions_schema(s),
    }


def ensure_tables(s: Settings) -> Catalog:
    """Create the namespace and the platform's tables if they do not exist yet; bring the
    features and predictions tables of an earlier release to their present columns."""
    catalog = load_catalog(s)
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(s.namespace)
    for name, schema in table_schemas(s).items():
        table = catalog.create_table_if_not_exists(s.table_id(name), schema=schema)
        if name == s.features_table:
            ensure_features_layout(s, table)
        elif name in (s.predictions_table, s.stream_predictions_table):
            evolve_predictions_table(table, schema)
    return catalog


def load_table(s: Settings, name: str) -> Table:
    try:
        return load_catalog(s).load_table(s.table_id(name))
    except NoSuchTableError as error:
        raise NoSuchTableError(
            f"Iceberg table {s.table_id(name)} does not exist in catalog {s.catalog_name} "
            f"({s.resolved_catalog_url}); run the preprocess flow first."
        ) from error


def count_rows(table: Table, snapshot_id: int | None = None) -> int:
    """Row count of a snapshot from its manifests' metadata, without reading data files."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id else table.current_snapshot()
    if snapshot is None:
        return 0
    return int(snapshot.summary.get("total-records", 0)) if snapshot.summary else 0


# A compaction's snapshot (mlplatform/maintenance/tables.py) says what it is and the highest data
# sequence number it merged, so that readers that follow appended files know its rows are old.
COMPACTION_KEY, MERGED_SEQUENCE_KEY = "mlp.maintenance", "mlp.compaction.max-sequence"


def compaction_summary(merged_sequence: int) -> dict[str, str]:
    return {COMPACTION_KEY: "compaction", MERGED_SEQUENCE_KEY: str(merged_sequence)}


def merged_sequence(snapshot: Snapshot) -> int | None:
    """A compaction's highest merged data sequence number (None: the snapshot is none)."""
    summary = snapshot.summary
    if summary is None or summary.get(COMPACTION_KEY) != "compaction":
        return None
    return int(summary[MERGED_SEQUENCE_KEY])
