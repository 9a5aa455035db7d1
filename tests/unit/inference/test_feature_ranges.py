"""One set of input rules: the dataset spec's ranges, checked by the one parser (HTTP and the
stream), handed to Pulsar Functions, and compiled into the Flink job's validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlplatform.inference.features import InvalidFeatures, parse_features, parse_message
from mlplatform.inference.serving.api_schema import parse_rows
from mlplatform.preprocess.batch import job_config
from mlplatform.preprocess.flink_job import validation_sql
from mlplatform.settings import Settings
from tests.helpers import register_constant_model

pytestmark = pytest.mark.unit


@pytest.fixture
def s(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path)


def test_a_value_outside_its_range_is_refused_naming_row_and_feature(s: Settings) -> None:
    order, ranges = s.feature_columns, s.dataset_spec.ranges
    low, high = ranges[order[0]]
    with pytest.raises(InvalidFeatures) as error:
        parse_rows([[1.0, 1.0, 1.0, 1.0], [low - 500, 3.5, 1.4, 0.2]], order, 10, ranges)
    assert (error.value.code, error.value.row, error.value.feature) == (
        "out_of_range",
        1,
        order[0],
    )
    assert str(error.value) == (
        f"row 1, feature 0 ({order[0]}): {low - 500!r} is outside the dataset's range "
        f"[{low:g}, {high:g}]"
    )
    assert error.value.reason == f"out_of_range: {order[0]}={low - 500!r}"


def test_range_bounds_are_closed(s: Settings) -> None:
    order, ranges = s.feature_columns, s.dataset_spec.ranges
    edges = [ranges[name][i % 2] for i, name in enumerate(order)]
    assert parse_features(edges, order, ranges=ranges) == edges
    above = {name: ranges[name][1] for name in order} | {order[-1]: ranges[order[-1]][1] + 1e-9}
    with pytest.raises(InvalidFeatures, match=f"feature 3 \\({order[-1]}\\)"):
        parse_features(above, order, ranges=ranges)


def test_a_stream_message_out_of_range_gets_a_dead_letter_reason(s: Settings) -> None:
    order = s.feature_columns
    row = {s.key_column: "e-1", **dict.fromkeys(order, 1.0), order[2]: 1e6}
    with pytest.raises(InvalidFeatures) as error:
        parse_message(json.dumps(row).encode(), s.key_column, order, s.dataset_spec.ranges)
    assert error.value.reason == f"out_of_range: {order[2]}=1000000.0"


def test_without_ranges_a_feature_must_fit_float32() -> None:
    """Found by fuzzing: 1e39 failed a whole stream micro-batch (trees compare in float32)."""
    assert parse_features([-500.0, 3.4e38], ["x", "y"]) == [-500.0, 3.4e38]
    with pytest.raises(InvalidFeatures, match=r"feature 0 \(x\): 1e\+39 is outside"):
        parse_features([1e39], ["x"])


def test_the_flink_job_checks_the_same_ranges(s: Settings, tmp_path: Path) -> None:
    sql = validation_sql(job_config(s, tmp_path, "ranges", None, None, None))
    checked = {
        name: (float(lo), float(hi))
        for name, lo, hi, again in re.findall(
            r"WHEN NOT \(`(\w+)` >= ([-\d.e+]+) AND `\w+` <= ([-\d.e+]+)\) "
            r"THEN 'out_of_range:(\w+)'",
            sql,
        )
        if name == again
    }
    features = {name: checked.get(name) for name in s.feature_columns}
    assert features == s.dataset_spec.ranges


def test_pulsar_functions_get_the_ranges_in_their_user_config(s: Settings) -> None:
    from mlplatform.inference.stream.pulsar_functions import champion_user_config

    s = s.model_copy(update={"database_url": f"sqlite:///{s.local_dir / 'registry.db'}"})
    config = champion_user_config(s, register_constant_model(s).version)
    triples = [r.split(":") for r in config["feature_ranges"].split(",")]
    assert {n: (float(lo), float(hi)) for n, lo, hi in triples} == s.dataset_spec.ranges
