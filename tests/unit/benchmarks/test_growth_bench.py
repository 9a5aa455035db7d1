"""benchmarks/growth.py's synthetic lake grows day by day, and its ratios are to the smallest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.growth import lake_rows, ratios
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


def test_lake_rows_take_their_days_newest_first(tmp_path: Path) -> None:
    s = Settings(_env_file=None, local_dir=tmp_path)
    rows = lake_rows(s, 25, offset=10, rows_per_day=10)
    today = datetime.now(UTC).date()
    dates = rows["event_date"].to_pylist()
    assert dates[:10] == [today - timedelta(days=1)] * 10  # rows 10..19: yesterday
    assert dates[10:] == [today - timedelta(days=2)] * 10 + [today - timedelta(days=3)] * 5


def test_ratios_are_to_the_smallest_lake_and_missing_stages_are_none() -> None:
    results = [
        {"rows": 10, "stages": {"preprocess": 2.0, "maintenance": 1.0}},
        {"rows": 100, "stages": {"preprocess": 3.0}},
    ]
    out = ratios(results)
    assert out["preprocess"] == {10: 1.0, 100: 1.5}
    assert out["maintenance"] == {10: 1.0, 100: None}
    assert out["raw limit"] == {10: None, 100: None}
