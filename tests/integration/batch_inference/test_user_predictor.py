"""A predictor of the user's own (examples/predictors/split_pipeline.py: a scaler as the
preprocessing stage, a linear model as the model stage) in place of the registry's estimator,
on the real services: a batch run with the preprocessing stage in actors of its own, the stream
consumers and a Serve application each predict what the registered pipeline's own
`predict_proba` does, through the same prediction record."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.expressions import EqualTo
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.connectors.pulsar_io import read_all
from mlplatform.inference.batch.results import STEPS
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.inference.serving.deployment import start_serving, stop_serving
from mlplatform.inference.stream.runner import run_stream_inference
from mlplatform.registry import model_registry
from mlplatform.sample_data.synthetic_features import feature_rows, publish_features
from mlplatform.settings import Settings
from tests.helpers import module_settings

pytestmark = pytest.mark.integration

ROWS = 200
STAGES = "examples/predictors/split_pipeline.py"


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> tuple[Settings, pa.Table, Pipeline]:
    """Settings naming the user's classes; ROWS feature rows in Iceberg and on the topic; a
    scaler + logistic regression pipeline as the registry's champion."""
    s = module_settings(
        isolated,
        "userpred",
        preprocessor_class=f"{STAGES}:Scale",
        predictor_class=f"{STAGES}:LinearModel",
        predictor_options={"device": "any"},
        stream_actors=1,
        stream_commit_interval_s=0.5,
        serve_min_replicas=1,
        serve_max_replicas=1,
    )
    rows = feature_rows(s, ROWS, seed=12)
    load_table(s, s.features_table).append(rows)
    publish_features(s, rows)
    x, y = _features(s, rows), rows[s.label_column].to_numpy()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    version = model_registry.register(
        s,
        pipeline,
        family="external",
        params={},
        metrics={"macro_f1": 1.0},
        training_table="test",
        training_snapshot_id=0,
        training_rows=ROWS,
        feature_order=s.feature_columns,
        label_names=s.label_names,
    )
    model_registry.promote(s, version.version)
    return s, rows, pipeline


def _features(s: Settings, rows: pa.Table) -> np.ndarray:
    return np.column_stack([rows[name].to_numpy() for name in s.feature_columns])


def _expected(s: Settings, rows: pa.Table, pipeline: Pipeline) -> dict[str, np.ndarray]:
    keys = rows[s.key_column].to_pylist()
    return dict(zip(keys, pipeline.predict_proba(_features(s, rows)), strict=True))


def test_batch_runs_the_preprocessing_stage_then_the_user_model(lake: tuple) -> None:
    """fused mode (separated mode loads its Serve replicas' model with the same loader)."""
    s, rows, pipeline = lake
    expected = _expected(s, rows, pipeline)
    result = run_batch_inference(s)
    assert result.predicted_rows == result.input_rows == ROWS
    assert list(result.steps) == list(STEPS)  # every fixed step timed, in order
    assert list(result.steps.values()) == sorted(result.steps.values())
    table = load_table(s, s.predictions_table)
    found = table.scan(row_filter=EqualTo("run_id", result.run_id)).to_arrow()
    assert found.num_rows == ROWS
    keys, probabilities = found[s.key_column].to_pylist(), found["probabilities"].to_pylist()
    for key, row in zip(keys, probabilities, strict=True):
        np.testing.assert_allclose(row, expected[key], rtol=1e-9)


def test_stream_consumers_predict_with_the_user_classes(lake: tuple) -> None:
    s, rows, pipeline = lake
    expected = _expected(s, rows, pipeline)
    result = run_stream_inference(s, max_messages=ROWS, timeout_s=90)
    assert result.consumed == ROWS
    records = [json.loads(m.data()) for m in read_all(s, s.predictions_topic)]
    assert sorted(r[s.key_column] for r in records) == sorted(expected)
    for record in records:
        np.testing.assert_allclose(record["probabilities"], expected[record[s.key_column]])
        best = int(np.argmax(expected[record[s.key_column]]))
        assert (record["class_index"], record["label"]) == (best, s.label_names[best])


def test_serving_answers_with_the_user_classes(lake: tuple) -> None:
    s, rows, pipeline = lake
    expected = _expected(s, rows.slice(0, 20), pipeline)
    address = start_serving(s)
    try:
        body = {"rows": _features(s, rows.slice(0, 20)).tolist()}
        answer = httpx.post(f"{address}/predict/bulk", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        for found, probabilities in zip(
            answer.json()["predictions"], expected.values(), strict=True
        ):
            by_name = [found["probabilities"][label] for label in s.label_names]
            np.testing.assert_allclose(by_name, probabilities, atol=1e-6)  # rounded to 6 places
    finally:
        stop_serving(s)
