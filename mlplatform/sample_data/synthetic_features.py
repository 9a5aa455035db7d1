"""Iris-like feature rows written straight to the Iceberg features table and the features topic,
for benchmarks and tests of the stages after preprocessing (the pipeline's own path into both is
the Flink job)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_iris

from mlplatform.connectors.iceberg_tables import ensure_tables
from mlplatform.connectors.pulsar_io import ensure_partitioned_topic, publish
from mlplatform.settings import Settings


def feature_rows(s: Settings, n_rows: int, seed: int = 0) -> pa.Table:
    """n_rows noisy Iris rows with unique keys, in the features table's Arrow schema."""
    rng = np.random.default_rng(seed)
    iris = load_iris()
    picks = rng.integers(0, len(iris.target), size=n_rows)
    values = np.clip(iris.data[picks] + rng.normal(0.0, 0.1, size=(n_rows, 4)), 0.1, None)
    prefix = uuid.uuid4().hex[:8]
    columns = {s.key_column: [f"{prefix}-{i}" for i in range(n_rows)]}
    columns |= {c: values[:, i] for i, c in enumerate(s.feature_columns)}
    columns[s.label_column] = iris.target[picks].astype(np.int32)
    columns["ingested_at"] = np.full(n_rows, np.datetime64(datetime.now(), "us"))
    return features_table_rows(s, columns)


def features_table_rows(s: Settings, columns: dict) -> pa.Table:
    """The dataset's columns and ingested_at completed as the Flink job writes a row (event
    time and date: ingested_at; the derived features), in the features table's Arrow schema."""
    ingested = np.asarray(columns["ingested_at"], dtype="datetime64[us]")
    columns = {**columns, "event_time": ingested, "event_date": ingested.astype("datetime64[D]")}
    columns |= {d.name: d.evaluate(columns) for d in s.dataset_spec.derived}
    schema = ensure_tables(s).load_table(s.table_id(s.features_table)).schema().as_arrow()
    return pa.Table.from_pydict(columns, schema=schema)


def append_features(
    s: Settings, n_rows: int, seed: int = 0, row_group_rows: int = 10_000, chunk_rows: int = 10**6
) -> int:
    """Append n_rows in files of up to chunk_rows rows and row groups of row_group_rows rows
    (one commit); the new snapshot id."""
    table = ensure_tables(s).load_table(s.table_id(s.features_table))
    with table.transaction() as transaction:
        transaction.set_properties({"write.parquet.row-group-limit": str(row_group_rows)})
    with table.transaction() as transaction:
        for start in range(0, n_rows, chunk_rows):
            rows = min(chunk_rows, n_rows - start)
            transaction.append(feature_rows(s, rows, seed + start))
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return snapshot.snapshot_id


def publish_features(s: Settings, rows: pa.Table) -> None:
    """Feature rows as the Flink job publishes them: on the features topic (made with its
    partitions), a JSON object per row without ingested_at, keyed by the event id."""
    ensure_partitioned_topic(s, s.features_topic, s.features_topic_partitions)
    records = rows.drop_columns(["ingested_at"]).to_pylist()
    payloads = [json.dumps(record, default=str).encode() for record in records]
    publish(s, s.features_topic, payloads, keys=[str(r[s.key_column]) for r in records])
