"""The live view's pure parts: percentiles and the artifact's text."""

from __future__ import annotations

import pytest

from mlplatform.ops.live_view import LiveView, markdown, percentiles
from tasks.realtime import artifact_key

pytestmark = pytest.mark.unit


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100 ms
    assert percentiles(values) == {"p50": 50.0, "p99": 99.0, "max": 100.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p99": 7.0, "max": 7.0}
    assert percentiles([]) == {}


def test_the_artifact_shows_every_figure() -> None:
    latency = {"p50": 41.5, "p99": 380.2, "max": 612.0}
    view = LiveView(5.0, 4000, 800.0, 1000.0, 12, 250, 3, latency)
    text = markdown(view, "ml")
    for shown in ("| 1000.0 |", "| 800.0 |", "| 12 |", "| 250 |", "| 3 |", "41.5 / 380.2 / 612.0"):
        assert shown in text
    assert "over the last 5 s" in text


def test_one_artifact_key_per_namespace() -> None:
    from mlplatform.settings import Settings

    assert artifact_key(Settings(namespace="wine_it")) == "realtime-wine-it"
