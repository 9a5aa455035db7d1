"""Properties of the Flink job's generated checks over generated dataset specs (Hypothesis, no
Flink): each feature's range rule is exactly its spec range, as SQL number literals."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mlplatform.dataset.spec import FeatureSpec
from mlplatform.preprocess.flink_job import validation_sql

pytestmark = pytest.mark.unit

# What Flink SQL reads as a number literal (a Python float's repr, when finite, is one).
SQL_NUMBER = r"-?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?"
NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z")


@st.composite
def feature_specs(draw: st.DrawFn) -> list[FeatureSpec]:
    names = draw(
        st.lists(NAMES, min_size=1, max_size=6, unique=True).filter(
            lambda ns: not {"key", "y"} & set(ns)
        )
    )
    features = []
    for name in names:
        bound = st.floats(allow_nan=False, allow_infinity=False)
        lo, hi = sorted(draw(st.lists(bound, min_size=2, max_size=2, unique=True)))
        features.append(
            FeatureSpec(name=name, type=draw(st.sampled_from(["double", "int"])), min=lo, max=hi)
        )
    return features


def _config(features: list[FeatureSpec], n_labels: int) -> dict:
    columns = ["key", *(f.name for f in features), "y"]
    return {
        "key_column": "key",
        "features": [f.model_dump() for f in features],
        "label_column": "y",
        "label_names": [f"class{i}" for i in range(n_labels)],
        "sources": [{"format": "csv", "columns": columns, "header": None}],
        "max_line_bytes": 1024,
    }


def _range_rules(sql: str, name: str) -> list[tuple[str, str]]:
    rule = rf"WHEN NOT \(`{name}` >= (\S+) AND `{name}` <= (\S+)\) THEN 'out_of_range:{name}'"
    return re.findall(rule, sql)


@settings(max_examples=200, deadline=None)
@given(features=feature_specs(), n_labels=st.integers(2, 12))
def test_each_range_rule_is_the_spec_range(features: list[FeatureSpec], n_labels: int) -> None:
    sql = validation_sql(_config(features, n_labels))
    for f in features:
        [(lo, hi)] = _range_rules(sql, f.name)
        assert re.fullmatch(SQL_NUMBER, lo) and re.fullmatch(SQL_NUMBER, hi), (lo, hi)
        assert (float(lo), float(hi)) == (f.min, f.max)
    assert _range_rules(sql, "y") == [("0.0", f"{float(n_labels - 1)!r}")]


@pytest.mark.parametrize("bounds", [(0.0, math.inf), (-math.inf, 1.0), (math.nan, 1.0)])
def test_an_infinite_spec_bound_is_refused(bounds: tuple[float, float]) -> None:
    """Found by fuzzing: an infinite bound reached the job's SQL as `<= inf`, which Flink
    cannot parse."""
    with pytest.raises(ValidationError, match="feature x: .* must be finite numbers"):
        FeatureSpec(name="x", min=bounds[0], max=bounds[1])
