"""mlplatform.training.drift: the population stability index and the per-feature drift report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.training.drift import drift_report, psi

pytestmark = pytest.mark.unit


def _normal(seed: int, mean: float = 0.0, n: int = 5000) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, n)


def test_psi_of_a_sample_against_itself_is_zero() -> None:
    sample = _normal(0)
    assert psi(sample, sample) == pytest.approx(0.0, abs=1e-12)
    assert psi(sample, sample.copy(), bins=5) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_two_samples_of_one_distribution_is_small() -> None:
    assert psi(_normal(0), _normal(1)) < 0.05


def test_psi_of_a_shifted_distribution_is_above_threshold() -> None:
    reference = _normal(0)
    assert psi(reference, _normal(1, mean=1.0)) > 0.2
    # A bigger shift is a bigger PSI.
    assert psi(reference, _normal(1, mean=2.0)) > psi(reference, _normal(1, mean=1.0))


def test_psi_sees_values_beyond_the_reference_range() -> None:
    reference = np.linspace(0.0, 1.0, 1000)
    assert psi(reference, np.full(1000, 50.0)) > 1.0
    assert psi(reference, np.full(1000, -50.0)) > 1.0


@pytest.mark.parametrize("seed", range(5))
def test_psi_is_non_negative(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), 300)
    current = rng.exponential(rng.uniform(0.5, 2), 200)
    for bins in (2, 5, 10, 20):
        assert psi(reference, current, bins) >= 0.0
        assert psi(current, reference, bins) >= 0.0


def test_psi_accepts_lists() -> None:
    assert psi([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], bins=2) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("reference", "current"),
    [([], [1.0, 2.0]), ([1.0, 2.0], []), ([], [])],
    ids=["empty-reference", "empty-current", "both-empty"],
)
def test_psi_of_empty_input_raises(reference: list, current: list) -> None:
    with pytest.raises(ValueError, match="needs rows"):
        psi(np.array(reference), np.array(current))


def test_drift_report_flags_only_the_drifted_column() -> None:
    reference = pd.DataFrame({"stable": _normal(0), "moved": _normal(1), "ignored": _normal(2)})
    current = pd.DataFrame(
        {"stable": _normal(3), "moved": _normal(4, mean=1.5), "ignored": _normal(5, mean=9.0)}
    )
    report = drift_report(reference, current, ["stable", "moved"], bins=10, threshold=0.2)
    assert [row["feature"] for row in report] == ["stable", "moved"]
    assert [row["drifted"] for row in report] == [False, True]
    assert report[0]["psi"] < 0.1 < 0.2 < report[1]["psi"]
    assert all(type(row["drifted"]) is bool for row in report)


def test_drift_report_psi_is_the_rounded_psi() -> None:
    reference = pd.DataFrame({"x": _normal(0)})
    current = pd.DataFrame({"x": _normal(1, mean=0.7)})
    (row,) = drift_report(reference, current, ["x"], bins=10, threshold=0.2)
    assert row["psi"] == round(psi(reference["x"].to_numpy(), current["x"].to_numpy(), 10), 4)


def test_drift_report_threshold_decides() -> None:
    reference = pd.DataFrame({"x": _normal(0)})
    current = pd.DataFrame({"x": _normal(1, mean=0.7)})
    (row,) = drift_report(reference, current, ["x"], bins=10, threshold=0.2)
    value = row["psi"]
    above = drift_report(reference, current, ["x"], bins=10, threshold=value + 0.01)
    below = drift_report(reference, current, ["x"], bins=10, threshold=value - 0.01)
    assert (above[0]["drifted"], below[0]["drifted"]) == (False, True)


def test_psi_flags_a_shift_away_from_a_constant_reference() -> None:
    assert psi(np.full(100, 5.0), np.full(100, 100.0)) > 1.0
    assert psi(np.full(100, 5.0), np.full(100, 5.0)) == pytest.approx(0.0, abs=1e-9)
