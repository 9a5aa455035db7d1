"""The training data: a bounded, stratified, seeded sample of one pinned Iceberg snapshot.

A snapshot whose metadata says it fits in the sample size is read whole (the columns training
needs only). A larger one is read twice, one data file at a time: the label column alone to
count the classes, then the needed columns, folded batch by batch into the sample
(mlplatform.training.sample), so memory holds the sample and one file's columns, never the
table. (pyiceberg's own batch reader reads every file of the scan ahead at once.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import Table

from mlplatform.connectors.iceberg_tables import count_rows, load_catalog, load_table
from mlplatform.settings import Settings
from mlplatform.training.sample import sample_batches, stratified_sample


@dataclass(frozen=True)
class TrainingSample:
    """Rows sampled from one snapshot, ordered by key, with what the lineage records."""

    frame: pd.DataFrame
    snapshot_id: int
    rows_available: int
    seed: int

    @property
    def rows_used(self) -> int:
        return len(self.frame)


def read_training_sample(
    s: Settings,
    snapshot_id: int | None = None,
    table_id: str | None = None,
    size: int | None = None,
) -> TrainingSample:
    """A features table (default: the configured one) at one snapshot (default: the current
    one), sampled to at most `size` rows (default: MLP_TRAINING_SAMPLE_ROWS), seeded by MLP_SEED."""
    table = load_catalog(s).load_table(table_id) if table_id else load_table(s, s.features_table)
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id else table.current_snapshot()
    if snapshot is None:
        wanted = f"snapshot {snapshot_id}" if snapshot_id else "any snapshot"
        raise LookupError(f"{table_id or s.table_id(s.features_table)} has no {wanted}")
    size = s.training_sample_rows if size is None else size
    pinned = snapshot.snapshot_id
    columns = (s.key_column, *s.feature_columns, s.label_column)
    if count_rows(table, pinned) <= size:
        frame = table.scan(snapshot_id=pinned, selected_fields=columns).to_pandas()
        sample = stratified_sample(frame, s.key_column, s.label_column, size, s.seed)
        return TrainingSample(sample, pinned, len(frame), s.seed)
    counts: Counter = Counter()
    for batch in file_by_file(table, pinned, (s.label_column,)):
        for item in pc.value_counts(batch.column(0)).to_pylist():
            counts[item["values"]] += item["counts"]
    batches = (batch.to_pandas() for batch in file_by_file(table, pinned, columns))
    sample = sample_batches(batches, counts, s.key_column, s.label_column, size, s.seed)
    return TrainingSample(sample, pinned, sum(counts.values()), s.seed)


def file_by_file(
    table: Table, snapshot_id: int, columns: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    """The snapshot's rows of `columns` as Arrow batches, reading one data file at a time
    (projection by field id and delete files as pyiceberg's own scan applies them)."""
    scan = table.scan(snapshot_id=snapshot_id, selected_fields=columns)
    projected = scan.projection()
    for task in scan.plan_files():
        reader = ArrowScan(scan.table_metadata, scan.io, projected, scan.row_filter)
        yield from reader.to_record_batches([task])
