"""Properties of the one feature parser (HTTP and stream) over generated input (Hypothesis): any
bytes or JSON value is either a row of finite floats in the model's order or an InvalidFeatures
with a code and a message; never another exception."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplatform.inference.features import InvalidFeatures, parse_features, parse_message

pytestmark = pytest.mark.unit

ORDER = ["a", "b", "c"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*ORDER, "key", "x"]) | st.text(max_size=4), inner)
    ),
    max_leaves=12,
)


def _refused_clearly(error: InvalidFeatures) -> None:
    assert error.code and str(error), error
    assert error.reason.startswith(f"{error.code}: ")


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(st.binary(max_size=200), JSON_VALUES.map(json.dumps).map(str.encode)))
def test_any_message_is_a_row_or_a_clear_refusal(payload: bytes) -> None:
    try:
        key, row = parse_message(payload, "key", ORDER)
    except InvalidFeatures as error:
        _refused_clearly(error)
        return
    assert key and len(row) == len(ORDER) and all(math.isfinite(v) for v in row)


@settings(max_examples=300, deadline=None)
@given(features=JSON_VALUES, row=st.none() | st.integers(0, 99))
def test_any_request_row_is_a_row_or_a_clear_refusal(features: object, row: int | None) -> None:
    try:
        values = parse_features(features, ORDER, row=row)
    except InvalidFeatures as error:
        _refused_clearly(error)
        assert error.row == row
        return
    assert len(values) == len(ORDER) and all(math.isfinite(v) for v in values)
