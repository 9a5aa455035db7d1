"""Pure parts of the batch inference benchmark: ratios, the time budget, the derived figures and
the targets (the predictions rows are batch inference's own, tested in test_batch_units)."""

from __future__ import annotations

import math

import pytest

from benchmarks.batch_inference import (
    derived,
    fits,
    parse_args,
    projected_seconds,
    ratio,
    rows_per_s,
    targets_met,
)

pytestmark = pytest.mark.unit


def test_ratios_and_rates() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None and ratio(None, 2.0) is None and ratio(1.0, math.nan) is None
    assert rows_per_s(1000, 2.0) == 500.0
    assert math.isnan(rows_per_s(1000, 0.0))


def test_the_budget_projects_from_the_smaller_size() -> None:
    measured = {"fused": 100_000.0, "spark": math.nan}
    assert projected_seconds(1_000_000, measured, "fused", slack=1.0) == 10.0
    assert projected_seconds(1_000_000, measured, "spark") is None  # unknown: it is run
    assert projected_seconds(1_000_000, measured, "bsp") is None
    assert fits(100.0, 50.0, 150.0) and not fits(100.0, 51.0, 150.0)


def test_quick_is_one_small_size() -> None:
    args = parse_args(["--quick"])
    assert args.sizes == [100_000] and args.budget_s <= 300
    assert parse_args(["--sizes", "10", "5", "10"]).sizes == [5, 10]


def _result(rows: int, model: str, variant: str, rate: float) -> dict:
    return {"rows": rows, "model": model, "variant": variant, "rows_per_s": rate}


def test_derived_figures_come_from_the_largest_size_measured() -> None:
    results = [
        _result(10, "forest_100", "raw", 200.0),
        _result(10, "forest_100", "fused", 100.0),
        _result(10, "forest_100", "spark", 50.0),
        _result(10, "forest_100", "no_checkpoint", 110.0),
        _result(100, "forest_100", "raw", 400.0),
        _result(100, "forest_100", "read_predict", 700.0),
        _result(100, "forest_100", "fused", 300.0),
        _result(100, "tree_d3", "fused", 100.0),
        _result(100, "tree_d3", "no_checkpoint", 102.0),
    ]
    ratios = derived(results, {"recomputed_fraction": 0.01, "valid": True})
    assert ratios["fused_over_raw_forest"] == 0.75  # 100 rows
    assert ratios["fused_over_read_predict_forest"] == pytest.approx(0.429, abs=1e-3)
    assert ratios["fused_over_spark_forest"] == 2.0  # only measured at 10 rows
    assert ratios["checkpoint_overhead"] == pytest.approx(0.02, abs=1e-3)
    met = targets_met(ratios)
    assert list(met.values()) == [True, False, False, True, True, None, None, None]
    assert set(targets_met({}).values()) == {None}


def test_pool_starts_and_the_drivers_memory_are_judged() -> None:
    results = [
        {**_result(10, "forest_100", "fused", 100.0), "driver_peak_rss_mb": 400.0},
        {**_result(100, "forest_100", "fused", 300.0), "driver_peak_rss_mb": 440.0},
        {**_result(100, "tree_d3", "fused", 300.0), "driver_peak_rss_mb": 900.0},
    ]
    pool = {"cold": {"steps": {"first_commit": 9.0}}, "warm": {"steps": {"first_commit": 6.0}}}
    ratios = derived(results, None, pool)
    assert (ratios["first_commit_cold_s"], ratios["first_commit_warm_s"]) == (9.0, 6.0)
    assert ratios["driver_rss_ratio"] == 1.1  # the forest's, largest over smallest size
    met = targets_met(ratios)
    assert list(met.values())[-3:] == [False, True, True]
