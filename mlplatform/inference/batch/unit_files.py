"""Writes on the workers: the model stage's predictions become Parquet data files in the
predictions table's location, written where they were computed; the driver gets one small
metadata row per unit part (inference.batch.commit commits the files, runner gathers them).

A unit part is one unit's rows of one model-stage batch (a batch holds one unit, or the end of
one and the start of the next). Its data files are written by the worker under a fresh write id
and named by Iceberg's location provider; nothing references them until the driver commits the
unit, so a part of an attempt that is never committed is invisible to every reader. The driver
deletes the files it knows will never be committed (a unit that failed or came back incomplete,
a unit another run committed first); files of an attempt cut off by a crash are removed by table
maintenance's orphan removal, once older than MLP_ORPHAN_MIN_AGE_HOURS.
"""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from mlplatform.dataset.prediction_record import (
    CLASS_INDEX,
    LABEL,
    MODEL_VERSION,
    PROBABILITIES,
    REASON,
)
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS

# The model stage's output: one row per unit part.
ARRIVED, ROWS, FILES, REASONS = "arrived", "rows", "files", "reasons"


@dataclass(frozen=True)
class WriteTarget:
    """Where and how a run's predictions are written: the predictions table's metadata and file
    IO (both picklable: sent to every model-stage actor once), the run and its input snapshot."""

    metadata: TableMetadata
    io: FileIO
    key: str
    run_id: str
    snapshot_id: int

    @classmethod
    def of(cls, table: Table, key: str, run_id: str, snapshot_id: int) -> WriteTarget:
        return cls(table.metadata, table.io, key, run_id, snapshot_id)


@dataclass
class UnitFiles:
    """A unit's predictions as written data files: its rows (refused rows included), the files,
    and the refused rows' counts by reason."""

    rows: int = 0
    files: list[DataFile] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)

    def add(self, rows: int, files: list[DataFile], refused: dict[str, int]) -> None:
        self.rows += rows
        self.files.extend(files)
        for reason, count in refused.items():
            self.refused[reason] = self.refused.get(reason, 0) + count


def predictions_rows(
    table: pa.Table, key: str, schema: pa.Schema, run_id: str, snapshot_id: int
) -> pa.Table:
    """The predictions table's rows of model-stage output (placeholder rows dropped), in the
    table's Arrow schema."""
    if table[key].null_count:
        table = table.filter(pc.is_valid(table[key]))
    n = table.num_rows
    out = table.select([key, CLASS_INDEX, LABEL, PROBABILITIES, MODEL_VERSION, REASON])
    out = out.append_column("run_id", pa.repeat(pa.scalar(run_id, pa.string()), n))
    out = out.append_column("input_snapshot_id", pa.repeat(pa.scalar(snapshot_id, pa.int64()), n))
    return out.cast(schema)


def unit_parts(table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """(unit, its rows) of model-stage output; zero-copy slices when a unit's rows are adjacent."""
    units = table[UNIT].to_numpy()
    if len(units) == 0:
        return
    if (np.diff(units) != 0).sum() + 1 != len(np.unique(units)):  # not grouped: group them
        order = np.argsort(units, kind="stable")
        table, units = table.take(order), units[order]
    starts = [0, *(np.flatnonzero(np.diff(units)) + 1).tolist(), len(units)]
    for first, end in zip(starts, starts[1:], strict=False):
        yield int(units[first]), table.slice(first, end - first)


def first_error(part: pa.Table) -> str | None:
    errors = part[ERROR]
    failed = pc.not_equal(errors, "")
    if not pc.any(failed).as_py():
        return None
    return errors.filter(failed)[0].as_py()


def write_data_files(metadata: TableMetadata, io: FileIO, rows: pa.Table) -> list[DataFile]:
    """Rows (in the table's Arrow schema) as data files of the table, not committed."""
    return list(_dataframe_to_data_files(metadata, rows, io, uuid.uuid4()))


def write_parts(predicted: pa.Table, target: WriteTarget) -> pa.Table:
    """The write stage: each unit part of the model stage's output written as data files; one
    metadata row per part (its unit, the unit's row count, the rows that arrived, the rows
    written, its error, the pickled DataFiles, the refused rows by reason as JSON)."""
    schema = target.metadata.schema().as_arrow()
    out: dict[str, list] = {c: [] for c in (UNIT, UNIT_ROWS, ARRIVED, ROWS, ERROR, FILES, REASONS)}
    for unit, part in unit_parts(predicted):
        error = first_error(part)
        written, files, refused = 0, [], {}
        if error is None:
            rows = predictions_rows(part, target.key, schema, target.run_id, target.snapshot_id)
            if rows.num_rows:
                written = rows.num_rows
                files = write_data_files(target.metadata, target.io, rows)
                counts = pc.value_counts(rows[REASON].drop_null()).to_pylist()
                refused = {c["values"]: c["counts"] for c in counts}
        out[UNIT].append(unit)
        out[UNIT_ROWS].append(part[UNIT_ROWS][0].as_py())
        out[ARRIVED].append(part.num_rows)
        out[ROWS].append(written)
        out[ERROR].append(error or "")
        out[FILES].append(pickle.dumps(files))
        out[REASONS].append(json.dumps(refused))
    return _parts_table(out)


def failed_parts(unit: int, error: str) -> pa.Table:
    """write_parts' metadata row of a unit whose work failed as a whole (nothing written)."""
    return _parts_table(
        {
            UNIT: [unit],
            UNIT_ROWS: [0],
            ARRIVED: [0],
            ROWS: [0],
            ERROR: [error[:2000]],
            FILES: [pickle.dumps([])],
            REASONS: ["{}"],
        }
    )


def _parts_table(out: dict[str, list]) -> pa.Table:
    types = [pa.int64(), pa.int64(), pa.int64(), pa.int64(), pa.string(), pa.binary(), pa.string()]
    return pa.table({c: pa.array(v, t) for (c, v), t in zip(out.items(), types, strict=True)})


def part_files(row: dict) -> list[DataFile]:
    """The DataFiles of a metadata row (write_parts' pickle, from this run's own workers)."""
    return pickle.loads(row[FILES])


def delete_files(io: FileIO, files: list[DataFile]) -> None:
    """Delete data files that will never be committed (missing ones are fine)."""
    for file in files:
        try:
            io.delete(file.file_path)
        except FileNotFoundError:
            continue
