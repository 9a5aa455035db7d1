"""Schema evolution of the Iceberg features table, driven by the schemas raw files declare
(see raw_files): new columns are added as optional ones (rows written before read null);
files with incompatible changes are set aside and the run fails with what each one changes.
"""

from __future__ import annotations

from pathlib import Path

from pyiceberg.table import Table
from pyiceberg.types import BooleanType, DoubleType, IcebergType, IntegerType, LongType, StringType

from mlplatform.dataset.spec import DatasetSpec
from mlplatform.preprocess.landing_files import IncompatibleSchemaError

ICEBERG_TYPES: dict[str, IcebergType] = {
    "double": DoubleType(),
    "long": LongType(),
    "int": IntegerType(),
    "string": StringType(),
    "boolean": BooleanType(),
}
# Written by the job itself, not read from raw data (besides each dataset's derived features).
SYSTEM_COLUMNS = ("ingested_at", "event_time", "event_date")


def _type_name(kind: IcebergType) -> str:
    return next((name for name, t in ICEBERG_TYPES.items() if t == kind), str(kind))


def table_columns(table: Table, spec: DatasetSpec) -> tuple[dict[str, str], dict[str, str]]:
    """The dataset's columns (name -> type) and the optional columns added to the table since,
    in the table's order; a clear error when the table was made for another dataset."""
    required = {spec.key_column: "string", **{f.name: f.type for f in spec.features}}
    required[spec.label_column] = "int"
    fields = {f.name: _type_name(f.field_type) for f in table.schema().fields}
    missing = [c for c in required if c not in fields]
    if missing:
        raise ValueError(
            f"features table {'.'.join(table.name())} lacks column(s) {', '.join(missing)} of "
            f"dataset {spec.name}: it was made for another dataset; give this dataset a table "
            "of its own (MLP_NAMESPACE or MLP_FEATURES_TABLE)"
        )
    optional = {
        name: kind
        for name, kind in fields.items()
        if name not in required
        and name not in SYSTEM_COLUMNS
        and name not in {d.name for d in spec.derived}
    }
    return required, optional


def add_columns(table: Table, added: dict[str, str], added_by: dict[str, str], run_id: str) -> None:
    """Add the new columns, optional, at the end of the table's schema."""
    with table.update_schema() as update:
        for name, kind in added.items():
            doc = f"added by preprocess run {run_id} from {added_by[name]}"
            update.add_column(name, ICEBERG_TYPES[kind], doc=doc, required=False)


def set_aside(rejected: dict[Path, list[str]], folder: Path) -> IncompatibleSchemaError:
    """Move incompatible files into `folder` (each with a .reason.txt) and return the error
    that names each file, column and change."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for path, problems in sorted(rejected.items()):
        target = folder / path.name
        path.rename(target)
        target.with_name(target.name + ".reason.txt").write_text("\n".join(problems) + "\n")
        lines += [f"  {path.name}: {problem}" for problem in problems]
    return IncompatibleSchemaError(
        f"{len(rejected)} raw file(s) do not fit the features table and were set aside in "
        f"{folder}; the other files of this run wait in the landing folder for the next run:\n"
        + "\n".join(lines)
        + "\nFix or convert these files and put them back in the landing folder."
    )
