"""Units of work of batch inference: planned from an Iceberg snapshot's data files, read by Ray.

A unit is a run of consecutive Parquet row groups of one data file, up to unit_rows rows (a row
group larger than that is a unit by itself). Planning reads only the files' footers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import expression_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import Table

from mlplatform.connectors.niceness import at_niceness

if TYPE_CHECKING:
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
    table: Table,
    snapshot_id: int,
    row_filter: BooleanExpression,
    unit_rows: int,
    skip_files: frozenset[str] = frozenset(),
) -> list[UnitPlan]:
    """Units of the snapshot's data files that may hold rows matching the filter, in file order,
    but for those in `skip_files` (predicted by an earlier run: inference.batch.increments)."""
    # Here, not with the module: the read stage's Ray workers import it at every start.
    from checkpoints.store import UnitPlan

    tasks = table.scan(snapshot_id=snapshot_id, row_filter=row_filter).plan_files()
    units: list[UnitPlan] = []
    for task in sorted(tasks, key=lambda t: t.file.file_path):
        path = task.file.file_path
        if path in skip_files:
            continue
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


def _unit_table(columns: list[str], unit: int, rows: int, error: str) -> pa.Table:
    """A placeholder row of a unit: no matching rows (error "") or a unit that failed."""
    data = {c: pa.array([None] if i == 0 else [0.0], _type(i)) for i, c in enumerate(columns)}
    return _tagged(pa.table(data), unit, rows, error)


def _type(position: int) -> pa.DataType:
    """The read stage's column types: the key as a string, features as float64 (the model's)."""
    return pa.string() if position == 0 else pa.float64()


def _tagged(table: pa.Table, unit: int, rows: int, error: str) -> pa.Table:
    """The table with the unit columns appended: its unit, the unit's row count, its error."""
    n = table.num_rows
    for name, value, kind in (
        (UNIT, unit, pa.int64()),
        (UNIT_ROWS, rows, pa.int64()),
        (ERROR, error, pa.string()),
    ):
        table = table.append_column(name, pa.repeat(pa.scalar(value, kind), n))
    return table


def read_unit(
    unit: int,
    path: str,
    first_row_group: int,
    row_groups: int,
    columns: list[str],
    row_filter: str | None = None,
    schema_json: str | None = None,
) -> pa.Table:
    """The unit's rows (the key column first, as a string, then features as float64), tagged
    with the unit and its row count. A unit with no matching rows is one placeholder row with a
    null key, so that its completion is still seen downstream.
    """
    io = load_file_io({}, path)
    with io.new_input(path).open() as handle:
        table = pq.ParquetFile(handle).read_row_groups(
            range(first_row_group, first_row_group + row_groups), columns=columns
        )
    if row_filter:
        table = table.filter(_arrow_filter(row_filter, schema_json))
    if table.num_rows == 0:
        return _unit_table(columns, unit, 0, "")
    table = table.select(columns).cast(
        pa.schema([pa.field(c, _type(i)) for i, c in enumerate(columns)])
    )
    return _tagged(table, unit, table.num_rows, "")


def _arrow_filter(row_filter: str, schema_json: str | None) -> pa.compute.Expression:
    if not schema_json:
        raise ValueError("a row filter needs the table's schema (schema_json) to bind to")
    schema = Schema.model_validate_json(schema_json)
    return expression_to_pyarrow(bind(schema, parse(row_filter), case_sensitive=True), schema)


def read_unit_or_error(
    spec: dict, columns: list[str], row_filter: str | None, schema_json: str | None
) -> pa.Table:
    """read_unit of a unit spec (unit, file_path, first_row_group, row_groups); a unit that
    cannot be read is one error row (reported per unit, retried, never fails the whole run)."""
    try:
        return read_unit(
            spec["unit"],
            spec["file_path"],
            spec["first_row_group"],
            spec["row_groups"],
            columns,
            row_filter,
            schema_json,
        )
    except Exception as error:
        return _unit_table(columns, spec["unit"], 0, f"read failed: {error!r}"[:2000])


def read_units(
    batch: pa.Table,
    columns: list[str],
    row_filter: str | None,
    schema_json: str | None,
    niceness: int | None = None,
) -> pa.Table:
    """Ray Data stage: read each unit of the batch (read_unit_or_error)."""
    with at_niceness(niceness):
        tables = [
            read_unit_or_error(spec, columns, row_filter, schema_json) for spec in batch.to_pylist()
        ]
    return pa.concat_tables(tables)
