"""The transaction that computes its table metadata once per staged change (PyIceberg 0.12
deep-copies the whole metadata at every read, one per data file of an append): on a real
SQL-catalog lake in a temporary folder, the same snapshot as PyIceberg's own transaction makes,
with the metadata computed a few times whatever the number of files."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import _dataframe_to_data_files

from mlplatform.connectors import iceberg_tables
from mlplatform.connectors.iceberg_tables import load_catalog, transaction
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


def test_an_append_of_many_files_is_pyicebergs_snapshot_with_the_metadata_computed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = load_catalog(Settings(_env_file=None, local_dir=str(tmp_path)))
    catalog.create_namespace("t")
    table = catalog.create_table("t.rows", schema=pa.schema([("k", pa.string())]))
    files = [
        file
        for i in range(10)
        for file in _dataframe_to_data_files(
            table.metadata, pa.table({"k": [f"row-{i}"]}), table.io, uuid.uuid4()
        )
    ]
    computed: list[int] = []
    compute = iceberg_tables.update_table_metadata

    def counted(*args: Any, **kwargs: Any) -> Any:
        computed.append(len(args[1]))
        return compute(*args, **kwargs)

    monkeypatch.setattr(iceberg_tables, "update_table_metadata", counted)
    summaries = []
    for begin in (table.transaction, lambda: transaction(table)):
        with (
            begin() as tx,
            tx.update_snapshot(snapshot_properties={"run": "r1"}).fast_append() as append,
        ):
            for file in files[:5] if not summaries else files[5:]:
                append.append_data_file(file)
        summaries.append(table.current_snapshot().summary)
    assert 0 < len(computed) <= 4, computed  # PyIceberg's own: once per file and more
    own, ours = (dict(s.additional_properties, operation=s.operation) for s in summaries)
    assert ours["added-data-files"] == own["added-data-files"] == "5"
    assert ours["total-records"] == "10" and ours["run"] == own["run"] == "r1"
    assert sorted(table.scan().to_arrow()["k"].to_pylist()) == sorted(f"row-{i}" for i in range(10))
