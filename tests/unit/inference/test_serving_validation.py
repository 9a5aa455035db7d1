"""The serving API's request checks and prediction shaping, as plain functions (no Ray)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from mlplatform.dataset.prediction_record import CLASS_INDEX, LABEL, MODEL_VERSION, PROBABILITIES
from mlplatform.inference.features import InvalidFeatures, parse_features, parse_value
from mlplatform.inference.serving.api_schema import (
    PredictResponse,
    describe_predictions,
    describe_request_errors,
    http_status,
    parse_rows,
)

pytestmark = pytest.mark.unit

ORDER = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def _refusal(call: Any, *args: Any, **kwargs: Any) -> InvalidFeatures:
    with pytest.raises(InvalidFeatures) as caught:
        call(*args, **kwargs)
    return caught.value


def test_features_by_position_and_by_name_give_the_model_order() -> None:
    assert parse_features([5.1, 3, 1.4, 0.2], ORDER) == [5.1, 3.0, 1.4, 0.2]
    by_name = {"petal_width": 0.2, "sepal_length": 5.1, "petal_length": 1.4, "sepal_width": 3}
    assert parse_features(by_name, ORDER) == [5.1, 3.0, 1.4, 0.2]


def test_wrong_count_says_expected_and_got() -> None:
    error = _refusal(parse_features, [1.0, 2.0, 3.0], ORDER)
    assert str(error) == (
        "expected 4 features (sepal_length, sepal_width, petal_length, petal_width), got 3"
    )
    assert http_status(error) == 422 and error.code == "wrong_count"
    error = _refusal(parse_features, [1.0] * 5, ORDER, row=7)
    assert str(error).startswith("row 7: expected 4 features") and str(error).endswith("got 5")
    assert error.row == 7


@pytest.mark.parametrize("value", ["5.1", None, True, [1.0], {"a": 1}])
def test_non_numbers_are_refused_with_row_and_feature(value: Any) -> None:
    error = _refusal(parse_features, [1.0, value, 2.0, 3.0], ORDER, row=2)
    assert str(error) == f"row 2, feature 1 (sepal_width): {value!r} is not a number"
    assert (error.row, error.feature, http_status(error)) == (2, "sepal_width", 422)
    assert error.reason == f"not_number: sepal_width={value!r}"


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_from_json_are_refused(text: str) -> None:
    value = json.loads(text)  # Python's json accepts these literals
    error = _refusal(parse_value, value, 0, 3, "petal_width")
    assert "row 0, feature 3 (petal_width)" in str(error)
    assert "not a finite number" in str(error)


def test_an_integer_too_large_for_a_float_is_refused() -> None:
    error = _refusal(parse_value, 10**400, None, 0, "sepal_length")
    assert str(error).startswith("feature 0 (sepal_length): ")
    assert "not a finite number" in str(error)


def test_unknown_and_missing_names_are_refused() -> None:
    row = {"sepal_length": 1.0, "sepal_width": 1.0, "petal_length": 1.0, "petal_widht": 1.0}
    error = _refusal(parse_features, row, ORDER, row=4)
    assert str(error).startswith("row 4: unknown feature name(s) petal_widht; expected ")
    assert error.feature == "petal_widht"
    assert error.reason == "unknown_feature: petal_widht"
    del row["petal_widht"]
    error = _refusal(parse_features, row, ORDER)
    assert str(error).startswith("missing feature(s) petal_width; expected sepal_length")
    assert error.reason == "missing_feature: petal_width"


def test_a_row_of_the_wrong_type_is_refused() -> None:
    error = _refusal(parse_features, "5.1,3.5,1.4,0.2", ORDER, row=1)
    assert str(error).startswith("row 1: expected a list of 4 numbers")


def test_rows_mixing_positions_and_names() -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], dict(zip(ORDER, [6.7, 3.0, 5.2, 2.3], strict=True))]
    x = parse_rows(rows, ORDER, max_rows=10)
    assert x.dtype == np.float64 and x.shape == (2, 4)
    assert x.tolist() == [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def test_the_first_bad_row_is_named() -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, float("nan"), 4.0]]
    error = _refusal(parse_rows, rows, ORDER, max_rows=10)
    assert str(error).startswith("row 2, feature 2 (petal_length): nan is not a finite number")


def test_too_many_rows_is_413_and_empty_is_422() -> None:
    error = _refusal(parse_rows, [[1.0] * 4] * 4, ORDER, max_rows=3)
    assert http_status(error) == 413
    assert str(error) == "4 rows in one request; at most 3 (MLP_SERVE_MAX_ROWS): split the request"
    error = _refusal(parse_rows, [], ORDER, max_rows=3)
    assert (http_status(error), str(error)) == (422, "'rows' is empty; send 1 to 3 rows")
    assert http_status(_refusal(parse_rows, {"a": 1}, ORDER, max_rows=3)) == 422


def test_predictions_name_the_classes_of_the_model() -> None:
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]])
    out = describe_predictions(probabilities, np.array([0, 1, 2]), ["a", "b", "c"])
    assert out[0] == {
        "label": "a",
        "class_index": 0,
        "probabilities": {"a": 0.9, "b": 0.1, "c": 0.0},
    }
    assert out[1]["label"] == "c" and out[1]["class_index"] == 2
    # A model that never saw class 1 has two columns: indexes come from its classes_, and
    # every class has its probability, in label_names order (0 for class 1).
    out = describe_predictions(np.array([[0.4, 0.6]]), np.array([0, 2]), ["a", "b", "c"])
    assert out == [
        {"label": "c", "class_index": 2, "probabilities": {"a": 0.4, "b": 0.0, "c": 0.6}}
    ]
    assert list(out[0]["probabilities"]) == ["a", "b", "c"]
    assert math.isclose(sum(out[0]["probabilities"].values()), 1.0)


def test_answers_have_the_prediction_records_field_names() -> None:
    assert set(PredictResponse.model_fields) == {CLASS_INDEX, LABEL, PROBABILITIES, MODEL_VERSION}


def test_request_errors_bad_json_is_400_and_shape_is_422() -> None:
    bad_json = [
        {
            "type": "json_invalid",
            "loc": ("body", 9),
            "msg": "JSON decode error",
            "ctx": {"error": "Expecting value"},
        }
    ]
    assert describe_request_errors(bad_json) == (
        400,
        "the body is not valid JSON: Expecting value at character 9",
    )
    missing = [{"type": "missing", "loc": ("body", "features"), "msg": "Field required"}]
    assert describe_request_errors(missing) == (422, "features: Field required")
    not_json = [{"type": "model_attributes_type", "loc": ("body",), "msg": "x", "input": b"a=1"}]
    status, message = describe_request_errors(not_json)
    assert status == 422 and "Content-Type: application/json" in message
