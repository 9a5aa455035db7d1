"""The landing folder's raw files (CSV, JSON lines, Parquet): claiming them for a run, reading
the schema each declares, and laying them out as the Flink job's sources.

A CSV file declares its columns in its header line (a first line that starts with the key
column's name; without one, the dataset's column order is assumed), a Parquet file in its
schema; a JSON line declares nothing beyond itself, so a key that is no known column is an
extra field of that row. Declared schemas are compared with the features table:
- a column the table lacks is a new optional column (its type from the Parquet schema, or for
  CSV double when the file's first values are all numbers, else string);
- a file that lacks a required column (the key, a feature, the label), or gives a column a type
  that does not fit the table's, is incompatible: it is rejected as a whole.
Parquet rows reach Flink as JSON lines written beside the file (`<name>.jsonl`): no Flink Parquet
format is installed, and so the same checks and reasons apply to them as to JSON lines.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.dataset.spec import NAME_PATTERN, DatasetSpec

FORMATS = {
    ".csv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".parquet": "parquet",
}
CONVERTED = ".parquet.jsonl"  # a Parquet file's rows as JSON lines, made for the job
TYPE_SAMPLE_ROWS = 50


class IncompatibleSchemaError(ValueError):
    """Raw files whose declared schema does not fit the features table; they were set aside."""


@dataclass(frozen=True)
class Declared:
    """The columns a file declares, in its order, with a type where the file gives one."""

    columns: list[str]
    types: dict[str, str] = field(default_factory=dict)
    header: str | None = None  # a CSV file's header line


def raw_format(path: Path) -> str | None:
    if path.name.endswith(CONVERTED):
        return None
    return FORMATS.get(path.suffix.lower())


def claim(landing: Path, run_id: str) -> Path | None:
    """Move the landing folder's raw files into a folder of this run; None when there are none.

    A crashed run leaves its folder in _inflight/; the next run takes it over whole, as a
    subfolder, so no file name can clash.
    """
    inflight = landing / "_inflight" / run_id
    files = sorted(p for p in landing.glob("*") if p.is_file() and raw_format(p))
    crashed = [d for d in sorted((landing / "_inflight").glob("*")) if d != inflight and d.is_dir()]
    if not files and not crashed and not any(raw_format(p) for p in inflight.rglob("*")):
        return None
    inflight.mkdir(parents=True, exist_ok=True)
    for path in files:
        path.rename(inflight / path.name)
    for folder in crashed:
        folder.rename(inflight / f"recovered-{folder.name}")
    return inflight


def arrow_type(kind: pa.DataType) -> str:
    """A Parquet column's type in the features table's terms."""
    if pa.types.is_floating(kind):
        return "double"
    if pa.types.is_integer(kind):
        return "long"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_boolean(kind):
        return "boolean"
    return f"unsupported ({kind})"


def _sample_type(lines: list[str], index: int) -> str:
    """double when the first rows' values in a column are all numbers, else string."""
    values = [
        fields[index].strip()
        for fields in (line.split(",") for line in lines)
        if len(fields) > index and fields[index].strip()
    ]
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return "string"
    return "double" if numbers else "string"


def declared_schema(path: Path, spec: DatasetSpec) -> Declared | None:
    """The columns a CSV or Parquet file declares (None for JSON lines)."""
    kind = raw_format(path)
    if kind == "parquet":
        schema = pq.read_schema(path)
        return Declared(schema.names, {f.name: arrow_type(f.type) for f in schema})
    if kind != "csv":
        return None
    with path.open("rb") as handle:
        head = [
            handle.readline().decode("utf-8", "replace").rstrip("\r\n")
            for _ in range(TYPE_SAMPLE_ROWS + 1)
        ]
    first = head[0]
    if first.split(",")[0].strip() != spec.key_column:
        return Declared(spec.columns)  # no header line: the dataset's own order
    columns = [c.strip() for c in first.split(",")]
    rows = [line for line in head[1:] if line]
    new = [c for c in columns if c not in spec.columns]
    return Declared(columns, {c: _sample_type(rows, columns.index(c)) for c in new}, first)


FITS = {  # a file's type -> the table types it can be written to
    "double": {"double"},
    "long": {"long", "double", "int"},
    "string": {"string"},
    "boolean": {"boolean"},
}


def compare(
    declared: Declared, required: dict[str, str], optional: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Against the table (required and optional columns with their types): the new columns to
    add, and the incompatible changes, each naming its column and the change."""
    problems = [
        f"column {c!r} is not a plain name ({NAME_PATTERN})"
        for c in declared.columns
        if not re.fullmatch(NAME_PATTERN, c)
    ]
    problems += [
        f"column {c!r} appears twice"
        for c in sorted(set(declared.columns))
        if declared.columns.count(c) > 1
    ]
    problems += [
        f"drops required column {c!r} ({kind})"
        for c, kind in required.items()
        if c not in declared.columns
    ]
    added: dict[str, str] = {}
    for column, kind in declared.types.items():
        table_type = required.get(column) or optional.get(column)
        if kind.startswith("unsupported"):
            problems.append(f"column {column!r} has an {kind} type")
        elif table_type is None:
            added[column] = kind
        elif table_type not in FITS[kind]:
            problems.append(f"changes column {column!r} from {table_type} to {kind}")
    return added, problems


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def parquet_to_json_lines(path: Path, target: Path) -> int:
    """Write a Parquet file's rows as JSON lines (non-finite floats as "NaN", "Infinity")."""
    rows = 0
    with target.open("w") as out:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            for row in batch.to_pylist():
                out.write(json.dumps({k: _json_value(v) for k, v in row.items()}, default=str))
                out.write("\n")
                rows += 1
    return rows


@dataclass
class Plan:
    """A run's files laid out as the job's sources, and what their schemas ask of the table."""

    sources: list[dict[str, Any]]
    files: int  # raw files in the sources (a Parquet file and its JSON lines count once)
    added: dict[str, str]  # new optional columns: name -> type
    added_by: dict[str, str]  # new optional column -> the file that brought it
    rejected: dict[Path, list[str]]  # incompatible files and what is wrong with each


def _flat_name(run_dir: Path, path: Path) -> str:
    return path.relative_to(run_dir).as_posix().replace("/", "--")


def plan_sources(
    run_dir: Path, spec: DatasetSpec, required: dict[str, str], optional: dict[str, str]
) -> Plan:
    """Group the run's raw files by format and declared columns into one folder per Flink
    source (csv-<i>, json; a Parquet file kept in parquet/ with its rows as JSON lines in
    json/), and compare each declared schema with the table's columns (`required`, `optional`:
    name -> type) and the columns files before it added."""
    for stale in run_dir.rglob(f"*{CONVERTED}"):
        stale.unlink()  # a crashed run's conversion: made again
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and raw_format(p))
    known = dict(optional)
    plan = Plan([], 0, {}, {}, {})
    csv_groups: dict[tuple[tuple[str, ...], str | None], Path] = {}
    moves: list[tuple[Path, Path]] = []
    for path in files:
        try:
            declared = declared_schema(path, spec)
        except (OSError, pa.ArrowException) as error:
            plan.rejected[path] = [f"cannot be read as {raw_format(path)}: {error}"]
            continue
        if declared is not None:
            added, problems = compare(declared, required, known)
            if problems:
                plan.rejected[path] = problems
                continue
            for column, kind in added.items():
                known[column] = plan.added[column] = kind
                plan.added_by[column] = path.name
        kind = raw_format(path)
        if kind == "csv":
            group = (tuple(declared.columns), declared.header)  # type: ignore[union-attr]
            folder = csv_groups.setdefault(group, run_dir / f"csv-{len(csv_groups)}")
        else:
            folder = run_dir / kind  # type: ignore[operator]
        moves.append((path, folder / _flat_name(run_dir, path)))
    for source, target in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        if source != target:
            source.rename(target)
        if raw_format(target) == "parquet":
            converted = run_dir / "json" / (target.name.removesuffix(".parquet") + CONVERTED)
            converted.parent.mkdir(parents=True, exist_ok=True)
            parquet_to_json_lines(target, converted)
    plan.files = len(moves)
    for (columns, header), folder in csv_groups.items():
        plan.sources.append(
            {
                "format": "csv",
                "path": f"file://{folder}",
                "columns": list(columns),
                "header": header,
            }
        )
    if (run_dir / "json").is_dir():
        plan.sources.append({"format": "json", "path": f"file://{run_dir / 'json'}"})
    return plan
