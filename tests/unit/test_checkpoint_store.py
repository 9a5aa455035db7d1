"""checkpoints.store.CheckpointStore on a temporary SQLite database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from checkpoints.store import CheckpointStore, Unit

pytestmark = pytest.mark.unit

JOB = {"kind": "batch-inference", "dataset": "ml.features", "snapshot_id": 11, "model_version": 2}
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    # get_engine is cached per URL: every test gets its own database file.
    return CheckpointStore(f"sqlite:///{tmp_path}/checkpoints.sqlite")


def _start(store: CheckpointStore, run_id: str, minutes: int = 0, **overrides: object):
    fields = {**JOB, "mode": "fused", "rows_total": 100, **overrides}
    return store.start_run(run_id, started_at=T0 + timedelta(minutes=minutes), **fields)


def test_start_run_is_running(store: CheckpointStore) -> None:
    run = _start(store, "r1")
    assert run.run_id == "r1" and run.status == "running"
    stored = store.get_run("r1")
    assert stored.status == "running"
    assert stored.rows_total == 100
    assert stored.finished_at is None and stored.error is None


def test_start_run_generates_id(store: CheckpointStore) -> None:
    run = store.start_run(**JOB, mode="fused")
    assert len(run.run_id) == 32
    assert store.get_run(run.run_id).kind == "batch-inference"


def test_get_run_unknown(store: CheckpointStore) -> None:
    with pytest.raises(LookupError, match="'nope'"):
        store.get_run("nope")


def test_find_unfinished_returns_newest_unsucceeded(store: CheckpointStore) -> None:
    assert store.find_unfinished(**JOB) is None
    _start(store, "old", minutes=0)
    _start(store, "new", minutes=5)
    _start(store, "newest-done", minutes=10)
    store.set_status("newest-done", "succeeded")
    assert store.find_unfinished(**JOB).run_id == "new"
    store.set_status("new", "succeeded")
    assert store.find_unfinished(**JOB).run_id == "old"
    store.set_status("old", "failed", error="boom")
    assert store.find_unfinished(**JOB).run_id == "old"


def test_find_unfinished_matches_the_same_job_only(store: CheckpointStore) -> None:
    _start(store, "r1")
    assert store.find_unfinished(**{**JOB, "snapshot_id": 12}) is None
    assert store.find_unfinished(**{**JOB, "model_version": 3}) is None
    assert store.find_unfinished(**{**JOB, "dataset": "ml.other"}) is None
    assert store.find_unfinished(**{**JOB, "kind": "stream"}) is None
    assert store.find_unfinished(**JOB).run_id == "r1"


def test_set_status(store: CheckpointStore) -> None:
    _start(store, "r1")
    store.set_status("r1", "failed", error="RuntimeError('x')")
    failed = store.get_run("r1")
    assert failed.status == "failed" and failed.error == "RuntimeError('x')"
    assert failed.finished_at is not None
    store.set_status("r1", "running")
    resumed = store.get_run("r1")
    assert resumed.status == "running"
    assert resumed.finished_at is None and resumed.error is None


def test_set_status_unknown_run(store: CheckpointStore) -> None:
    with pytest.raises(LookupError):
        store.set_status("ghost", "failed")


def test_record_unit_progress_and_next_unit(store: CheckpointStore) -> None:
    _start(store, "r1")
    _start(store, "r2")
    assert store.progress("r1") == (0, 0)
    assert store.next_unit("r1") == 0
    store.record_unit("r1", 0, rows_in=10, rows_out=10, snapshot_id=100)
    store.record_unit("r1", 1, rows_in=7, rows_out=7, snapshot_id=101)
    store.record_unit("r2", 0, rows_in=3, rows_out=3, snapshot_id=None)
    assert store.progress("r1") == (2, 17)
    assert store.progress("r2") == (1, 3)
    assert store.next_unit("r1") == 2
    assert store.next_unit("r2") == 1


def test_record_unit_same_unit_merges(store: CheckpointStore) -> None:
    _start(store, "r1")
    store.record_unit("r1", 0, rows_in=10, rows_out=10, snapshot_id=100)
    store.record_unit("r1", 0, rows_in=10, rows_out=9, snapshot_id=200)
    assert store.progress("r1") == (1, 9)
    assert store.next_unit("r1") == 1
    with Session(store.engine) as session:
        units = session.scalars(select(Unit).where(Unit.run_id == "r1")).all()
    assert len(units) == 1
    assert units[0].status == "done"
    assert units[0].committed_snapshot_id == 200


def test_next_unit_follows_max_not_count(store: CheckpointStore) -> None:
    _start(store, "r1")
    store.record_unit("r1", 4, rows_in=1, rows_out=1, snapshot_id=1)
    assert store.next_unit("r1") == 5
    assert store.progress("r1") == (1, 1)
