"""Batch inference over rows that break the dataset's rules (a table written by another tool):
each such row gets its reason instead of a prediction, and is never sent to the model."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from mlplatform.inference.batch.model_stage import predict_table
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS
from mlplatform.registry.model_ref import ModelRef

pytestmark = pytest.mark.unit

REF = ModelRef(
    version=3,
    artifact_path="/nonexistent",
    sha256="0" * 64,
    feature_order=("f1", "f2"),
    label_names=("low", "high"),
)
RANGES = {"f1": (0.0, 10.0), "f2": (-1.0, 1.0)}


def _batch(f1: list, f2: list) -> pa.Table:
    n = len(f1)
    return pa.table(
        {
            UNIT: pa.array([0] * n, pa.int64()),
            UNIT_ROWS: pa.array([n] * n, pa.int64()),
            ERROR: pa.array([""] * n, pa.string()),
            "event_id": [f"e{i}" for i in range(n)],
            "f1": pa.array(f1, pa.float64()),
            "f2": pa.array(f2, pa.float64()),
        }
    )


def test_each_refused_row_gets_the_first_broken_features_reason() -> None:
    batch = _batch(
        [1.0, -0.5, 10.0, math.nan, None, 11.0, 2.0, math.inf],
        [0.0, 0.0, 1.0, 0.0, 5.0, None, -1.5, 0.0],
    )
    seen: list[np.ndarray] = []

    def predict(features: np.ndarray) -> np.ndarray:
        seen.append(features)
        return np.tile([0.25, 0.75], (len(features), 1))

    out = predict_table(batch, REF, "event_id", predict, RANGES)
    assert out["reason"].to_pylist() == [
        None,
        "out_of_range:f1",
        None,  # the bounds are in the range
        "not_finite:f1",
        "missing_value:f1",
        "missing_value:f2",  # a missing value before a range, as the Flink job checks
        "out_of_range:f2",
        "not_finite:f1",
    ]
    assert len(seen) == 1 and seen[0].tolist() == [[1.0, 0.0], [10.0, 1.0]]
    assert out["label"].to_pylist() == ["high", None, "high", None, None, None, None, None]
    assert out["class_index"].null_count == out["probabilities"].null_count == 6
    assert out["model_version"].to_pylist() == [3] * 8
    assert out[ERROR].to_pylist() == [""] * 8


def test_without_ranges_a_value_must_fit_float32() -> None:
    out = predict_table(
        _batch([-500.0, None, 1e39], [0.0, 0.0, 0.0]),
        REF,
        "event_id",
        lambda x: np.ones((len(x), 2)) / 2,
    )
    assert out["reason"].to_pylist() == [None, "missing_value:f1", "out_of_range:f1"]
