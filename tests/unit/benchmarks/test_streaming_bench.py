"""Pure parts of the streaming benchmark: percentiles, latency matching, summaries, rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.streaming import (
    derived,
    feature_rows,
    latency_by_second,
    match_latencies,
    medians,
    parse_args,
    percentile,
    rate_between,
    ratio,
    round_figures,
    summarize,
    without_nan,
)
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


def test_percentile_interpolates_like_numpy() -> None:
    values = [7.0, 1.0, 3.0, 10.0, 2.5]
    for q in (0, 25, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([4.0], 99) == 4.0
    assert math.isnan(percentile([], 50))


def test_latencies_are_matched_by_key_and_missing_ones_counted() -> None:
    sent = {"a": 10.0, "b": 10.5, "c": 11.0}
    arrived = {"a": 10.02, "c": 11.005, "other": 12.0}
    latencies, missing = match_latencies(sent, arrived)
    assert sorted(latencies) == pytest.approx([5.0, 20.0])
    assert missing == 1


def test_summary_of_latencies() -> None:
    summary = summarize([float(v) for v in range(1, 101)])
    assert summary["count"] == 100
    assert summary["p50_ms"] == 50.5 and summary["max_ms"] == 100.0
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["mean_ms"] == 50.5
    assert summarize([]) == {"count": 0}


def test_latency_by_second_shows_a_growing_backlog() -> None:
    sent = {f"k{i}": 100.0 + i * 0.5 for i in range(6)}  # 3 seconds, 2 messages each
    arrived = {k: t + 0.01 * (1 + int(t - 100.0)) for k, t in sent.items()}
    assert latency_by_second(sent, arrived) == [10.0, 20.0, 30.0]
    assert latency_by_second({}, {}) == []


def test_rates_and_ratios() -> None:
    assert rate_between(101, 5.0, 6.0) == 100.0
    assert math.isnan(rate_between(1, 5.0, 5.0))
    assert ratio(800.0, 1000.0) == 0.8
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(math.nan, 2.0))
    assert without_nan({"a": [math.nan, 1.0], "b": (2, math.nan)}) == {
        "a": [None, 1.0],
        "b": [2, None],
    }


def test_feature_rows_have_the_flink_jobs_shape() -> None:
    s = Settings()
    rows = feature_rows(s, "x-", 5, seed=1)
    assert [r[s.key_column] for r in rows] == [f"x-{i}" for i in range(5)]
    for row in rows:
        assert set(row) == {s.key_column, *s.feature_columns, s.label_column}
        assert all(s.feature_min < row[c] < s.feature_max for c in s.feature_columns)
        assert row[s.label_column] in range(len(s.label_names))
    assert rows == feature_rows(s, "x-", 5, seed=1)


def test_quick_mode_bounds_the_run() -> None:
    args = parse_args(["--quick"])
    assert args.duration <= 4 and args.messages <= 3000 and args.requests <= 100
    assert parse_args(["--rate", "250"]).rate == 250


def test_rounds_are_summed_up_by_their_medians_and_the_targets_read_them() -> None:
    def one(ray_p99: float, plain_p99: float, ray_rate: float, plain_rate: float) -> dict:
        latency = {
            "ray": {"latency_to_arrival": {"p50_ms": 10.0, "p99_ms": ray_p99}},
            "plain": {"latency_to_arrival": {"p50_ms": 9.0, "p99_ms": plain_p99}},
        }
        throughput = {"ray": {"msgs_per_s": ray_rate}, "plain": {"msgs_per_s": plain_rate}}
        return round_figures(latency, throughput)

    rounds = [
        one(40.0, 20.0, 900.0, 1000.0),
        one(80.0, 40.0, 500.0, 1000.0),
        one(45.0, 30.0, 800, 1000),
    ]
    assert rounds[0]["ray_over_plain_msgs_per_s"] == pytest.approx(0.9)
    assert math.isnan(round_figures({}, {"ray": {"msgs_per_s": 900.0}})["ray_p99_ms"])
    middle = medians(rounds)
    assert middle["ray_p99_ms"] == 45.0 and middle["ray_over_plain_msgs_per_s"] == pytest.approx(
        0.8
    )
    assert middle["ray_over_plain_p99_latency"] == pytest.approx(2.0)  # 2, 2, 1.5
    assert all(math.isnan(v) for v in medians([round_figures({}, {})]).values())
    summary = {"serving": {}, "medians": middle, "args": {"rate": 1000}}
    ratios, targets = derived(summary)
    assert ratios["ray_over_plain_msgs_per_s"] == pytest.approx(0.8)
    assert list(targets.values()) == [True, True, False]  # no serving figures: not met
