"""Which data files a compaction merges (mlplatform.maintenance.tables.compaction_groups)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mlplatform.maintenance.tables import compaction_groups, size_tier

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
