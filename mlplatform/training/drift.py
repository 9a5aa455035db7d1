"""Feature drift between two snapshots: the population stability index (PSI) per feature."""

from __future__ import annotations

import numpy as np
import pandas as pd

EPSILON = 1e-6


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of `current` against `reference`, over the reference's quantile bins.

    Rule of thumb: below 0.1 stable, 0.1-0.2 moderate shift, above 0.2 significant drift.
    """
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("PSI needs rows in both the reference and the current sample")
    # Quantile edges of the reference, plus open bins below its minimum and above its maximum,
    # so a constant reference still has somewhere else for shifted values to land.
    quantiles = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    above_max = np.nextafter(quantiles[-1], np.inf)
    edges = np.concatenate([[-np.inf], quantiles, [above_max, np.inf]])
    expected = np.histogram(reference, edges)[0] / len(reference)
    actual = np.histogram(current, edges)[0] / len(current)
    expected, actual = np.clip(expected, EPSILON, None), np.clip(actual, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], bins: int, threshold: float
) -> list[dict[str, object]]:
    """One row per feature: its PSI and whether it crosses the threshold."""
    rows = []
    for column in columns:
        value = psi(reference[column].to_numpy(), current[column].to_numpy(), bins)
        rows.append({"feature": column, "psi": round(value, 4), "drifted": value > threshold})
    return rows
