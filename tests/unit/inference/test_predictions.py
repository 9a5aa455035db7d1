"""The one prediction record: probabilities in label order, its Arrow columns and its rows, and
the batch predictors' use of the model's classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression

from mlplatform.dataset.prediction_record import CLASS_INDEX, LABEL, MODEL_VERSION, PROBABILITIES
from mlplatform.inference.batch.model_pool import in_label_order
from mlplatform.inference.batch.model_stage import ModelStage
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS
from mlplatform.inference.predictions import (
    Prediction,
    label_order,
    prediction_columns,
    predictions,
)
from mlplatform.registry.model_ref import ModelRef
from tests.helpers import predictions_target, written_rows

pytestmark = pytest.mark.unit

LABELS = ("a", "b", "c")


def test_columns_of_all_classes_stay_as_they_are() -> None:
    p = np.array([[0.2, 0.3, 0.5]])
    np.testing.assert_array_equal(label_order(p, np.array([0, 1, 2]), 3), p)
    np.testing.assert_array_equal(label_order(p, None, 3), p)


def test_a_model_without_some_class_gets_zero_for_it() -> None:
    """Two columns for classes_ [0, 2]: the class index is 2, not the column's 1."""
    out = label_order(np.array([[0.4, 0.6], [0.7, 0.3]]), np.array([0, 2]), 3)
    np.testing.assert_array_equal(out, [[0.4, 0.0, 0.6], [0.7, 0.0, 0.3]])
    assert [p.class_index for p in predictions(out, None, LABELS, 4)] == [2, 0]


def test_columns_that_do_not_fit_the_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="2 probabilities a row for its 3 classes"):
        label_order(np.array([[0.5, 0.5]]), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match=r"classes \[0, 3\] are not all indexes"):
        label_order(np.array([[0.5, 0.5]]), np.array([0, 3]), 3)


def test_rows_and_records() -> None:
    [first, second] = predictions(np.array([[0.1, 0.9], [0.8, 0.2]]), [2, 0], LABELS, 7)
    assert first == Prediction(0, "a", (0.9, 0.0, 0.1), 7)
    assert second == Prediction(2, "c", (0.2, 0.0, 0.8), 7)
    assert first.record("event_id", "e1") == {
        "event_id": "e1",
        CLASS_INDEX: 0,
        LABEL: "a",
        PROBABILITIES: [0.9, 0.0, 0.1],
        MODEL_VERSION: 7,
    }


def test_arrow_columns() -> None:
    columns = prediction_columns(np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), LABELS, 3)
    table = pa.table(columns)
    assert table.schema.field(CLASS_INDEX).type == pa.int32()
    assert table.schema.field(MODEL_VERSION).type == pa.int32()
    assert table.schema.field(PROBABILITIES).type == pa.list_(pa.float64())
    assert table.to_pydict() == {
        CLASS_INDEX: [2, 0],
        LABEL: ["c", "a"],
        PROBABILITIES: [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]],
        MODEL_VERSION: [3, 3],
    }
    assert pa.table(prediction_columns(np.zeros((0, 3)), LABELS, 3)).num_rows == 0


def test_the_batch_predictor_maps_the_models_classes(tmp_path: Path) -> None:
    """A model trained on classes 0 and 2 of three: its rows are labelled 'c', not 'b'."""
    x = np.array([[0.0], [1.0], [9.0], [10.0]])
    model = LogisticRegression().fit(x, [0, 0, 2, 2])
    ref = ModelRef(3, "/nonexistent", "0" * 64, ("f1",), LABELS)
    stage = ModelStage(
        ref, "event_id", predictions_target(tmp_path), lambda x: in_label_order(model, ref, x)
    )
    batch = pa.table(
        {
            "event_id": ["low", "high"],
            "f1": [0.5, 9.5],
            UNIT: [0, 0],
            UNIT_ROWS: [2, 2],
            ERROR: ["", ""],
        }
    )
    out = written_rows(stage(batch)).to_pydict()
    assert out[CLASS_INDEX] == [0, 2] and out[LABEL] == ["a", "c"]
    assert all(len(p) == 3 and p[1] == 0.0 for p in out[PROBABILITIES])
