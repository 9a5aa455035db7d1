"""Which data files a compaction merges (mlplatform.maintenance.tables.compaction_groups), and
what it writes."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.maintenance.tables import (
    Window,
    compact,
    compaction_groups,
    live_entries,
    size_tier,
    window_of,
)
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


def _entry(path: str, size: int, sequence: int, partition: str = "2026-12-01", spec: int = 0):
    file = SimpleNamespace(
        file_path=path, file_size_in_bytes=size, partition=partition, spec_id=spec
    )
    return SimpleNamespace(data_file=file, sequence_number=sequence)


def _paths(groups) -> list[list[str]]:
    return sorted(sorted(e.data_file.file_path for e in group) for group in groups)


def test_small_files_of_one_partition_are_merged_oldest_first() -> None:
    entries = [_entry("b", 10, 2), _entry("a", 10, 1), _entry("big", 1000, 3)]
    [group] = compaction_groups(entries, small_bytes=100, max_sequence=None, group_bytes=10**6)
    assert [e.data_file.file_path for e in group] == ["a", "b"]


def test_partitions_and_specs_are_merged_apart_and_a_lone_file_is_left() -> None:
    entries = [
        _entry("d1a", 10, 1, "2026-12-01"),
        _entry("d1b", 10, 2, "2026-12-01"),
        _entry("d2", 10, 3, "2026-12-02"),
        _entry("old-spec", 10, 4, "2026-12-01", spec=1),
    ]
    assert _paths(compaction_groups(entries, 100, None, 10**6)) == [["d1a", "d1b"]]


def test_files_newer_than_the_bound_wait_for_the_lineages() -> None:
    entries = [_entry("a", 10, 1), _entry("b", 10, 2), _entry("c", 10, 3)]
    assert _paths(compaction_groups(entries, 100, 2, 10**6)) == [["a", "b"]]
    assert compaction_groups(entries, 100, 1, 10**6) == []


def test_groups_stop_at_the_byte_bound_and_a_lone_remainder_is_left() -> None:
    entries = [_entry(name, 40, seq) for seq, name in enumerate("abcde")]
    assert _paths(compaction_groups(entries, 100, None, group_bytes=80)) == [["a", "b"], ["c", "d"]]


def test_size_tiers_merge_files_of_similar_size_once_there_are_enough() -> None:
    mib = 1 << 20
    assert [size_tier(s) for s in (1, mib, mib + 1, 4 * mib, 4 * mib + 1, 16 * mib + 1)] == [
        0,
        0,
        1,
        1,
        2,
        3,
    ]
    merged = _entry("merged", 3 * mib, 1)  # an earlier run's output: tier 1, alone there
    new = [_entry(f"n{i}", 1000, i + 2) for i in range(3)]
    small = 32 * mib
    assert compaction_groups([merged, *new], small, None, 1 << 30, min_files=4) == []
    fourth = _entry("n3", 1000, 9)
    groups = compaction_groups([merged, *new, fourth], small, None, 1 << 30, min_files=4)
    assert _paths(groups) == [["n0", "n1", "n2", "n3"]]  # the merged file is not rewritten


def test_a_group_becomes_one_file_whatever_the_tables_target_size(tmp_path: Path) -> None:
    """PyIceberg's writer splits by in-memory size (write.target-file-size-bytes): a merged file
    must not come out as several small ones, to be merged again by the next run."""
    s = Settings(_env_file=None, local_dir=tmp_path)
    for seed in range(4):
        append_features(s, 5_000, seed=seed)
    table = load_table(s, s.features_table)
    with table.transaction() as transaction:
        transaction.set_properties({"write.target-file-size-bytes": "50000"})
    table, merged = compact(table.refresh(), 1 << 30, None, 1 << 30, min_files=4)
    assert merged == 4 and len(live_entries(table)) == 1
    assert table.scan().to_arrow().num_rows == 20_000


def test_a_date_partitioned_table_has_a_window_and_an_unpartitioned_one_none(
    tmp_path: Path,
) -> None:
    s = Settings(_env_file=None, local_dir=tmp_path)
    append_features(s, 10)
    features = load_table(s, s.features_table)
    window = window_of(features, 7, today=date(2026, 12, 3))
    assert window == Window("event_date", date(2026, 11, 26))
    assert window.holds_folder("event_date=2026-11-26") and window.holds_folder(
        "event_date=2027-01-01"
    )
    for outside in ("event_date=2026-11-25", "event_date=null", "other=2026-12-01", "x.parquet"):
        assert not window.holds_folder(outside)
    assert window_of(features, None) is None  # a whole-table run
    assert window_of(load_table(s, s.predictions_table), 7) is None  # not partitioned
