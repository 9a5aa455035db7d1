"""Schema evolution of the features table from the schemas raw files declare, on the real
services: a new column in a CSV header or a Parquet schema is added as an optional column
(rows written before read null) and filled by Flink; an incompatible file (a type change of a
column, a dropped required column) is set aside before any job runs, with an error that names
the file, the column and the change.
"""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.types import DoubleType, StringType

from mlplatform.connectors.iceberg_tables import ensure_tables, load_table
from mlplatform.connectors.pulsar_io import read_all
from mlplatform.preprocess.batch import PreprocessResult, preprocess
from mlplatform.preprocess.landing_files import IncompatibleSchemaError
from mlplatform.sample_data.demo_rows import header
from mlplatform.sample_data.synthetic_features import features_table_rows
from mlplatform.settings import Settings
from tests.helpers import module_settings

pytestmark = pytest.mark.integration

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    return module_settings(isolated, "evolve")


def _parquet(s: Settings, name: str, keys: list[str], **extra: pa.Array) -> None:
    n = len(keys)
    columns = {"event_id": pa.array(keys)}
    columns |= {c: pa.array([1.0 + i for i in range(n)], pa.float64()) for c in FEATURES}
    columns["label"] = pa.array([1] * n, pa.int64())
    s.resolved_landing_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns | extra), s.resolved_landing_dir / name)


@pytest.fixture(scope="module")
def evolved(lake: Settings) -> PreprocessResult:
    """Two rows written before, then a CSV file with a new numeric column and a Parquet file
    with a new text column."""
    old = ensure_tables(lake).load_table(lake.table_id(lake.features_table))
    rows = {"event_id": ["o1", "o2"]} | {c: [5.0, 6.0] for c in FEATURES}
    rows |= {"label": [0, 1], "ingested_at": [datetime(2026, 1, 1)] * 2}
    old.append(features_table_rows(lake, rows))
    lake.resolved_landing_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{header(lake)},soil_ph", "e1,5.1,3.5,1.4,0.2,0,6.5", "e2,5.2,3.4,1.5,0.2,0,"]
    (lake.resolved_landing_dir / "with-ph.csv").write_text("\n".join(lines) + "\n")
    _parquet(lake, "with-site.parquet", ["e3"], site=pa.array(["north"]))
    return preprocess(lake, run_id="it-evolve")


def test_new_columns_are_added_as_optional(lake: Settings, evolved: PreprocessResult) -> None:
    assert evolved.added_columns == {"soil_ph": "double", "site": "string"}
    assert (evolved.features_rows, evolved.quarantined_rows) == (3, 0)
    schema = load_table(lake, lake.features_table).schema()
    assert [f.name for f in schema.fields][-3:] == ["sepal_ratio", "soil_ph", "site"]
    ph, site = schema.find_field("soil_ph"), schema.find_field("site")
    assert (ph.field_type, ph.required) == (DoubleType(), False)
    assert (site.field_type, site.required) == (StringType(), False)
    assert "with-ph.csv" in ph.doc and "it-evolve" in ph.doc


def test_old_rows_read_null_and_new_rows_carry_their_values(
    lake: Settings, evolved: PreprocessResult
) -> None:
    rows = load_table(lake, lake.features_table).scan().to_pandas().set_index("event_id")
    assert sorted(rows.index) == ["e1", "e2", "e3", "o1", "o2"]
    assert rows.loc[["o1", "o2", "e2", "e3"], "soil_ph"].isna().all()
    assert rows.loc["e1", "soil_ph"] == 6.5
    assert rows.loc["e3", "site"] == "north" and rows.loc[["o1", "e1"], "site"].isna().all()
    messages = {m["event_id"]: m for m in map(json.loads, _data(lake))}
    assert messages["e1"]["soil_ph"] == 6.5 and messages["e3"]["site"] == "north"


def _data(s: Settings) -> list[bytes]:
    return [m.data() for m in read_all(s, s.features_topic)]


def test_incompatible_files_are_set_aside_with_a_named_change(
    lake: Settings, evolved: PreprocessResult
) -> None:
    """A Parquet file that turns a feature into text, one that turns the added soil_ph into
    text, and a CSV file without petal_width: no job runs, the table is unchanged."""
    table = load_table(lake, lake.features_table)
    before = (table.current_snapshot().snapshot_id, len(table.schema().fields))
    _parquet(lake, "text-width.parquet", ["t1"])
    path = lake.resolved_landing_dir / "text-width.parquet"
    data = pq.read_table(path).set_column(2, "sepal_width", pa.array(["wide"]))
    pq.write_table(data, path)
    _parquet(lake, "text-ph.parquet", ["t2"], soil_ph=pa.array(["acid"]))
    dropped = header(lake).replace(",petal_width", "")
    (lake.resolved_landing_dir / "no-width.csv").write_text(f"{dropped}\nt3,5.1,3.5,1.4,0\n")
    with pytest.raises(IncompatibleSchemaError) as error:
        preprocess(lake, run_id="it-incompatible")
    message = str(error.value)
    assert "3 raw file(s) do not fit the features table" in message
    assert "text-width.parquet: changes column 'sepal_width' from double to string" in message
    assert "text-ph.parquet: changes column 'soil_ph' from double to string" in message
    assert "no-width.csv: drops required column 'petal_width' (double)" in message
    rejected = lake.resolved_landing_dir / "_rejected" / "it-incompatible"
    assert sorted(p.name for p in rejected.glob("*.reason.txt")) == [
        "no-width.csv.reason.txt",
        "text-ph.parquet.reason.txt",
        "text-width.parquet.reason.txt",
    ]
    table = load_table(lake, lake.features_table)
    assert (table.current_snapshot().snapshot_id, len(table.schema().fields)) == before
