"""mlplatform.dataset.write_demo_raw: layout, counts, atomic write, malformed kinds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mlplatform.sample_data.demo_rows import MALFORMED_KINDS, header, write_demo_raw
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path)


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_header_lists_key_features_label(settings: Settings) -> None:
    assert header(settings) == "event_id,sepal_length,sepal_width,petal_length,petal_width,label"


def test_file_has_header_and_all_rows(settings: Settings) -> None:
    batch = write_demo_raw(settings, n_rows=40, n_malformed=9, seed=3)
    assert batch.path.parent == settings.resolved_landing_dir
    assert batch.path.suffix == ".csv"
    assert (batch.valid_rows, batch.malformed_rows) == (40, 9)
    lines = _lines(batch.path)
    assert lines[0] == header(settings)
    assert len(lines) == 1 + 40 + 9
    assert lines.count(header(settings)) == 1


def test_write_is_atomic_no_tmp_left(settings: Settings) -> None:
    write_demo_raw(settings, n_rows=5, n_malformed=2)
    files = list(settings.resolved_landing_dir.iterdir())
    assert len(files) == 1
    assert files[0].suffix == ".csv"
    assert not list(settings.resolved_landing_dir.glob("*.tmp"))


def test_each_call_writes_a_new_file(settings: Settings) -> None:
    first = write_demo_raw(settings, n_rows=3, n_malformed=0, seed=1)
    second = write_demo_raw(settings, n_rows=3, n_malformed=0, seed=1)
    assert first.path != second.path
    assert first.path.exists() and second.path.exists()


def test_valid_rows_are_well_formed(settings: Settings) -> None:
    batch = write_demo_raw(settings, n_rows=60, n_malformed=0, seed=5)
    rows = _lines(batch.path)[1:]
    keys = set()
    for row in rows:
        fields = row.split(",")
        assert len(fields) == 6
        keys.add(fields[0])
        values = [float(v) for v in fields[1:5]]
        assert all(settings.feature_min <= v <= settings.feature_max for v in values)
        assert int(fields[5]) in range(len(settings.label_names))
    assert len(keys) == 60


def test_malformed_kinds_cycle(settings: Settings) -> None:
    n_malformed = 2 * len(MALFORMED_KINDS) + 3
    batch = write_demo_raw(settings, n_rows=10, n_malformed=n_malformed, seed=0)
    prefix = batch.path.stem.removeprefix("raw-")
    expected = Counter(
        MALFORMED_KINDS[i % len(MALFORMED_KINDS)][1](f"{prefix}-bad-{i}")
        for i in range(n_malformed)
    )
    body = Counter(_lines(batch.path)[1:])
    assert body & expected == expected
    assert sum(body.values()) - sum(expected.values()) == 10
    # The first three kinds appear three times, the rest twice.
    reasons = Counter(MALFORMED_KINDS[i % len(MALFORMED_KINDS)][0] for i in range(n_malformed))
    assert reasons["not_a_number:sepal_width"] == 3
    assert reasons["out_of_range:label"] == 2


def test_same_seed_same_values(settings: Settings) -> None:
    def values(path: Path) -> list[str]:
        return sorted(",".join(line.split(",")[1:]) for line in _lines(path)[1:])

    a = write_demo_raw(settings, n_rows=20, n_malformed=4, seed=11)
    b = write_demo_raw(settings, n_rows=20, n_malformed=4, seed=11)
    c = write_demo_raw(settings, n_rows=20, n_malformed=4, seed=12)
    assert values(a.path) == values(b.path)
    assert values(a.path) != values(c.path)
