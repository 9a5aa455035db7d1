"""checkpoints.store.CheckpointStore on a temporary SQLite database."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from checkpoints.store import CheckpointStore, RunInProgress, UnitPlan, process_owner

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


def test_finish_records_the_outcome_and_releases_the_lease(store: CheckpointStore) -> None:
    _start(store, "r1")
    store.acquire("r1", "me:1:a", ttl_s=30)
    store.finish("r1", "someone-else:2:b", "succeeded")  # not the holder: nothing changes
    assert (store.get_run("r1").status, store.get_run("r1").owner) == ("running", "me:1:a")
    store.finish("r1", "me:1:a", "failed", error="RuntimeError('x')")
    failed = store.get_run("r1")
    assert (failed.status, failed.error, failed.owner) == ("failed", "RuntimeError('x')", None)
    assert failed.finished_at is not None
    store.acquire("r1", "me:3:c", ttl_s=30)  # a resume takes it back up
    resumed = store.get_run("r1")
    assert (resumed.status, resumed.finished_at) == ("running", None)


PLAN = [
    UnitPlan(0, "f1.parquet", 0, 2, 10),
    UnitPlan(1, "f1.parquet", 2, 1, 7),
    UnitPlan(2, "f2.parquet", 0, 1, 3),
]


def _open(store: CheckpointStore, key: str = "job", run_id: str | None = None):
    return store.open_run(key, run_id, lambda: PLAN, **JOB, mode="fused")


def test_open_run_plans_units_once_and_resumes_the_unfinished_run(store: CheckpointStore) -> None:
    run, resumed = _open(store, run_id="r1")
    assert not resumed and (run.units_total, run.rows_total) == (3, 20)
    assert [(u.unit, u.status, u.rows_in) for u in store.units("r1")] == [
        (0, "pending", 10),
        (1, "pending", 7),
        (2, "pending", 3),
    ]
    planned = []
    again, resumed = store.open_run(
        "job", "r2", lambda: planned.append(1) or PLAN, **JOB, mode="fused"
    )
    assert resumed and again.run_id == "r1"
    assert store.units("r2") == [] and planned == []  # a resume does not plan again


def test_open_run_resumes_a_failed_run_and_keeps_jobs_apart(store: CheckpointStore) -> None:
    _open(store, run_id="r1")
    store.acquire("r1", "me:1:a", ttl_s=30)
    store.finish("r1", "me:1:a", "failed", error="boom")
    run, resumed = _open(store, run_id="r2")
    assert resumed and run.run_id == "r1"
    other, resumed = _open(store, key="another-job", run_id="r3")
    assert not resumed and other.run_id == "r3"


def test_open_run_after_success_starts_a_new_run(store: CheckpointStore) -> None:
    _open(store, run_id="r1")
    store.acquire("r1", "me:1:a", ttl_s=30)
    store.finish("r1", "me:1:a", "succeeded")
    run, resumed = _open(store, run_id="r2")
    assert not resumed and run.run_id == "r2"
    assert _open(store, run_id="r3")[0].run_id == "r2"


def test_units_progress_done_and_failed_attempts(store: CheckpointStore) -> None:
    _open(store, run_id="r1")
    assert store.progress("r1") == (0, 0)
    store.mark_done("r1", {0: 10}, snapshot_id=100)
    store.mark_done("r1", {0: 99}, snapshot_id=200)  # already done: unchanged
    assert store.progress("r1") == (1, 10)
    store.mark_attempt_failed("r1", {1: "boom", 0: "ignored, done"}, max_attempts=2)
    [unit1] = [u for u in store.units("r1") if u.unit == 1]
    assert (unit1.status, unit1.attempts, unit1.last_error) == ("pending", 1, "boom")
    store.mark_attempt_failed("r1", {1: "boom again"}, max_attempts=2)
    [failed] = store.units("r1", "failed")
    assert (failed.unit, failed.attempts, failed.last_error) == (1, 2, "boom again")
    assert [u.unit for u in store.units("r1", "pending")] == [2]
    assert store.retry_failed("r1") == 1
    assert [u.unit for u in store.units("r1", "pending")] == [1, 2]
    [done] = store.units("r1", "done")
    assert (done.committed_snapshot_id, done.rows_out) == (100, 10)


def test_lease_refuses_a_live_holder_and_takes_over_a_stale_one(store: CheckpointStore) -> None:
    _open(store, run_id="r1")
    store.acquire("r1", "other-host:1:a", ttl_s=30)
    with pytest.raises(RunInProgress, match="other-host:1:a"):
        store.acquire("r1", "me:2:b", ttl_s=30)
    assert store.heartbeat("r1", "other-host:1:a")
    assert not store.heartbeat("r1", "me:2:b")
    store.acquire("r1", "me:2:b", ttl_s=0)  # heartbeat older than the TTL: taken over
    assert not store.heartbeat("r1", "other-host:1:a")
    store.finish("r1", "me:2:b", "succeeded")
    run = store.get_run("r1")
    assert (run.status, run.owner) == ("succeeded", None)


def test_lease_of_a_dead_process_on_this_host_is_taken_over(store: CheckpointStore) -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    _open(store, run_id="r1")
    store.acquire("r1", f"{socket.gethostname()}:{dead.stdout.strip()}:x", ttl_s=3600)
    me = process_owner()
    store.acquire("r1", me, ttl_s=3600)  # its owner's process is gone: taken over at once
    assert store.get_run("r1").owner == me
    with pytest.raises(RunInProgress):  # this process is alive: refused
        store.acquire("r1", process_owner(), ttl_s=3600)
