"""What an incremental batch run covers, on a real (local) Iceberg table: the data files appended
after the last run's snapshot, or every row with the reason when there is no last run, when
its snapshot expired, or when its files were rewritten; across table maintenance's compactions."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.expressions import AlwaysTrue, EqualTo
from pyiceberg.table import Table

from checkpoints.store import Run
from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.inference.batch.increments import data_files, increment
from mlplatform.inference.batch.units import plan_units
from mlplatform.maintenance.tables import compact
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import Settings


@pytest.fixture
def table(tmp_path: Path) -> tuple[Settings, Table, int, int]:
    s = Settings(_env_file=None, local_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db")
    first = append_features(s, 600, seed=1, row_group_rows=300)
    second = append_features(s, 400, seed=2, row_group_rows=200)
    return s, load_table(s, s.features_table), first, second


def _run(snapshot_id: int) -> Run:
    return Run(run_id="r", snapshot_id=snapshot_id)


def test_the_rows_appended_after_the_last_runs_snapshot(table: tuple) -> None:
    s, features, first, second = table
    part = increment(features, _run(first), second)
    assert part.since_snapshot_id == first and part.skip_files == data_files(features, first)
    assert part.basis == f"the rows of 1 data file(s) appended after snapshot {first}"
    units = plan_units(features, second, AlwaysTrue(), 10_000, part.skip_files)
    assert [u.rows for u in units] == [400]  # the second append's file, whole
    assert units[0].file_path not in data_files(features, first)
    nothing = increment(features, _run(second), second)
    assert plan_units(features, second, AlwaysTrue(), 10_000, nothing.skip_files) == []


def test_every_row_without_a_last_run_or_after_a_rewrite_or_an_expiry(table: tuple) -> None:
    s, features, first, second = table
    assert increment(features, None, second).since_snapshot_id is None
    expired = increment(features, _run(123), second)
    assert (expired.since_snapshot_id, expired.skip_files) == (None, frozenset())
    assert "snapshot 123 of the last run expired" in expired.basis
    some_key = features.scan(snapshot_id=first, limit=1).to_arrow()[s.key_column][0].as_py()
    features.delete(EqualTo(s.key_column, some_key))  # rewrites a file of the first append
    rewritten = increment(features, _run(first), features.current_snapshot().snapshot_id)
    assert rewritten.since_snapshot_id is None and rewritten.skip_files == frozenset()
    assert "1 data file(s) of snapshot" in rewritten.basis and "rewritten" in rewritten.basis


def test_a_compaction_of_predicted_files_leaves_only_the_new_rows(table: tuple) -> None:
    """Both appends predicted (the last run's snapshot is the second): maintenance merges
    their files; a third append's rows are all the next run covers."""
    s, features, first, second = table
    base = features.snapshot_by_id(second).sequence_number
    features, merged = compact(features, 1 << 30, max_sequence=base, group_bytes=1 << 30)
    assert merged == 2
    third = append_features(s, 100, seed=3)
    features = features.refresh()
    part = increment(features, _run(second), third)
    assert part.since_snapshot_id == second and "1 compaction(s) since" in part.basis
    units = plan_units(features, third, AlwaysTrue(), 10_000, part.skip_files)
    assert [u.rows for u in units] == [100]


def test_a_compaction_of_unpredicted_rows_means_every_row(table: tuple) -> None:
    """The last run saw only the first append; a compaction merged it with the second."""
    s, features, first, second = table
    features, merged = compact(features, 1 << 30, max_sequence=None, group_bytes=1 << 30)
    assert merged == 2
    part = increment(features, _run(first), features.current_snapshot().snapshot_id)
    assert (part.since_snapshot_id, part.skip_files) == (None, frozenset())
    assert "merged files appended after snapshot" in part.basis
