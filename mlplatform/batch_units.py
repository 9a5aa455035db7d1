"""Units of work of batch inference: planned from an Iceberg snapshot's data files, read by Ray.

A unit is a run of consecutive Parquet row groups of one data file, up to unit_rows rows (a row
group larger than that is a unit by itself). Planning reads only the files' footers.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import expression_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import Table

from checkpoints.store import UnitPlan

UNIT, UNIT_ROWS, ERROR = "_unit", "_unit_rows", "_error"


def parse_row_filter(text: str | None, table: Table) -> BooleanExpression:
    """An Iceberg row filter from text like "sepal_length > 5.0 AND label = 1"."""
    if not text:
        return AlwaysTrue()
    try:
        expression = parse(text)
        bind(table.schema(), expression, case_sensitive=True)
    except Exception as error:
        raise ValueError(f"row_filter {text!r} is not a valid Iceberg filter: {error}") from error
    return expression


def plan_units(
    table: Table, snapshot_id: int, row_filter: BooleanExpression, unit_rows: int
) -> list[UnitPlan]:
    """Units of the snapshot's data files that may hold rows matching the filter, in file order."""
    tasks = table.scan(snapshot_id=snapshot_id, row_filter=row_filter).plan_files()
    units: list[UnitPlan] = []
    for task in sorted(tasks, key=lambda t: t.file.file_path):
        path = task.file.file_path
        if task.delete_files:
            raise ValueError(
                f"{path} has {len(task.delete_files)} delete file(s); batch inference reads "
                "append-only snapshots. Compact the table (rewrite data files) first."
            )
        with table.io.new_input(path).open() as handle:
            sizes = [rg.num_rows for rg in _row_groups(pq.ParquetFile(handle).metadata)]
        first = 0
        while first < len(sizes):
            count, rows = 1, sizes[first]
            while first + count < len(sizes) and rows + sizes[first + count] <= unit_rows:
                rows += sizes[first + count]
                count += 1
            units.append(UnitPlan(len(units), path, first, count, rows))
            first += count
    return units


def _row_groups(metadata: pq.FileMetaData) -> list[pq.RowGroupMetaData]:
    return [metadata.row_group(i) for i in range(metadata.num_row_groups)]


def _unit_frame(columns: list[str], unit: int, rows: int, error: str) -> pd.DataFrame:
    """A placeholder row of a unit: no matching rows (error "") or a unit that failed."""
    frame = pd.DataFrame({c: [None] if i == 0 else [0.0] for i, c in enumerate(columns)})
    return frame.assign(**{UNIT: unit, UNIT_ROWS: rows, ERROR: error})


def read_unit(
    unit: int, path: str, first_row_group: int, row_groups: int, columns: list[str],
    row_filter: str | None = None, schema_json: str | None = None,
) -> pd.DataFrame:  # fmt: skip
    """The unit's rows (the key column first, then features), tagged with the unit and its row
    count. A unit with no matching rows is one placeholder row with a null key, so that its
    completion is still seen downstream.
    """
    io = load_file_io({}, path)
    with io.new_input(path).open() as handle:
        table = pq.ParquetFile(handle).read_row_groups(
            range(first_row_group, first_row_group + row_groups), columns=columns
        )
    if row_filter:
        table = table.filter(_arrow_filter(row_filter, schema_json))
    if table.num_rows == 0:
        return _unit_frame(columns, unit, 0, "")
    return table.to_pandas().assign(**{UNIT: unit, UNIT_ROWS: table.num_rows, ERROR: ""})


def _arrow_filter(row_filter: str, schema_json: str | None) -> pa.compute.Expression:
    if not schema_json:
        raise ValueError("a row filter needs the table's schema (schema_json) to bind to")
    schema = Schema.model_validate_json(schema_json)
    return expression_to_pyarrow(bind(schema, parse(row_filter), case_sensitive=True), schema)


def read_units(
    batch: pd.DataFrame, columns: list[str], row_filter: str | None, schema_json: str | None
) -> pd.DataFrame:
    """Ray Data stage: read each unit of the batch; a unit that cannot be read is one error row."""
    frames = []
    for row in batch.itertuples(index=False):
        try:
            frame = read_unit(
                row.unit, row.file_path, row.first_row_group, row.row_groups, columns,
                row_filter, schema_json,
            )  # fmt: skip
        except Exception as error:  # reported per unit, retried, never fails the whole run
            frame = _unit_frame(columns, row.unit, 0, f"read failed: {error!r}"[:2000])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
