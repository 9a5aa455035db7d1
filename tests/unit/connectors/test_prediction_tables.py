"""The predictions tables on a real SQL-catalog Iceberg lake in a temporary folder: new tables
have the one prediction record's columns, and tables of an earlier release are brought to them
in place, keeping their rows, once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import (
    DoubleType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
)

from mlplatform.connectors.iceberg_tables import (
    ensure_tables,
    load_catalog,
    load_table,
    predictions_schema,
    stream_predictions_schema,
)
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit

BATCH = ["event_id", "class_index", "label", "probabilities", "model_version", "reason"]
BATCH += ["run_id", "input_snapshot_id"]
STREAM = ["event_id", "class_index", "label", "probabilities", "model_version", "message_id"]
STREAM += ["predicted_at"]


@pytest.fixture
def lake(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path, namespace="ml")


def _names(table: Table) -> list[str]:
    return [f.name for f in table.schema().fields]


def _old_schemas() -> tuple[Schema, Schema]:
    """The predictions tables as the release before the one prediction record made them."""
    probabilities = ListType(element_id=100, element_type=DoubleType(), element_required=True)
    batch = Schema(
        NestedField(1, "event_id", StringType(), required=True),
        NestedField(2, "prediction", IntegerType(), required=True),
        NestedField(3, "probabilities", probabilities, required=True),
        NestedField(4, "model_version", IntegerType(), required=True),
        NestedField(5, "run_id", StringType(), required=True),
        NestedField(6, "input_snapshot_id", LongType(), required=True),
    )
    stream = Schema(
        NestedField(1, "event_id", StringType(), required=True),
        NestedField(2, "prediction", IntegerType(), required=True),
        NestedField(3, "label_name", StringType(), required=True),
        NestedField(4, "probabilities", probabilities, required=True),
        NestedField(5, "model_version", IntegerType(), required=True),
        NestedField(6, "message_id", StringType(), required=True),
        NestedField(7, "predicted_at", TimestampType(), required=True),
    )
    return batch, stream


def test_new_tables_have_the_prediction_record(lake: Settings) -> None:
    assert [f.name for f in predictions_schema(lake).fields] == BATCH
    assert [f.name for f in stream_predictions_schema(lake).fields] == STREAM
    ensure_tables(lake)
    assert _names(load_table(lake, lake.predictions_table)) == BATCH
    assert _names(load_table(lake, lake.stream_predictions_table)) == STREAM


def test_tables_of_an_earlier_release_are_evolved_in_place_once(lake: Settings) -> None:
    catalog = load_catalog(lake)
    catalog.create_namespace(lake.namespace)
    old_batch, old_stream = _old_schemas()
    batch = catalog.create_table(lake.table_id(lake.predictions_table), schema=old_batch)
    stream = catalog.create_table(lake.table_id(lake.stream_predictions_table), schema=old_stream)
    batch.append(
        pa.table(
            {
                "event_id": ["e1"],
                "prediction": pa.array([2], pa.int32()),
                "probabilities": [[0.1, 0.2, 0.7]],
                "model_version": pa.array([4], pa.int32()),
                "run_id": ["r1"],
                "input_snapshot_id": pa.array([9], pa.int64()),
            }
        ).cast(batch.schema().as_arrow())
    )
    ensure_tables(lake)
    batch = load_table(lake, lake.predictions_table)
    stream = load_table(lake, lake.stream_predictions_table)
    assert _names(batch) == BATCH and _names(stream) == STREAM
    assert not batch.schema().find_field("label").required  # older rows have none
    # A refused row has no class and no probabilities, only its reason.
    assert not any(batch.schema().find_field(n).required for n in ("class_index", "probabilities"))
    assert stream.schema().find_field("class_index").required
    rows = batch.scan().to_arrow().to_pylist()
    assert rows == [
        {
            "event_id": "e1",
            "class_index": 2,
            "label": None,
            "probabilities": [0.1, 0.2, 0.7],
            "model_version": 4,
            "reason": None,
            "run_id": "r1",
            "input_snapshot_id": 9,
        }
    ]
    ids = {f.name: f.field_id for f in stream.schema().fields}
    assert (ids["class_index"], ids["label"]) == (2, 3)  # renamed: the same columns
    schemas = (len(batch.metadata.schemas), len(stream.metadata.schemas))
    ensure_tables(lake)  # again: nothing to do
    batch, stream = batch.refresh(), stream.refresh()
    assert (len(batch.metadata.schemas), len(stream.metadata.schemas)) == schemas
    assert _names(batch) == BATCH and _names(stream) == STREAM
    # A new row goes in with the table's own (evolved) schema.
    batch.append(
        pa.table(
            {
                "event_id": ["e2"],
                "class_index": pa.array([0], pa.int32()),
                "label": ["setosa"],
                "probabilities": [[0.9, 0.1, 0.0]],
                "model_version": pa.array([5], pa.int32()),
                "reason": pa.nulls(1, pa.string()),
                "run_id": ["r2"],
                "input_snapshot_id": pa.array([10], pa.int64()),
            }
        ).cast(batch.schema().as_arrow())
    )
    assert sorted(batch.scan().to_arrow()["label"].to_pylist(), key=str) == [None, "setosa"]
