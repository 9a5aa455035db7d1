"""checkpoints.leases on real SQLite databases: one holder, refusals, expiry, crashes, races."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from checkpoints.database import get_engine
from checkpoints.leases import (
    LeaseHeld,
    LeaseLost,
    LeaseRow,
    acquire,
    held_lease,
    release,
    renew,
)
from checkpoints.store import process_owner

pytestmark = pytest.mark.unit


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/platform.db"


def _row(url: str, name: str = "job") -> LeaseRow | None:
    with Session(get_engine(url)) as session:
        return session.get(LeaseRow, name)


def _age_heartbeat(url: str, seconds: float, name: str = "job") -> None:
    """As if the holder had stopped renewing `seconds` ago."""
    with Session(get_engine(url)) as session, session.begin():
        session.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def test_a_live_holder_refuses_a_second_taker_until_it_gives_the_lease_back(url: str) -> None:
    acquire(url, "job", "host-a:1:aa", "run A", ttl_s=60)
    with pytest.raises(LeaseHeld, match="held by run A") as refused:
        acquire(url, "job", "host-b:2:bb", "run B", ttl_s=60)
    assert refused.value.holder.owner == "host-a:1:aa"
    assert _row(url).holder == "run A"
    acquire(url, "other-job", "host-b:2:bb", "run B", ttl_s=60)  # leases are per name
    release(url, "job", "host-b:2:bb")  # not the holder: nothing happens
    assert _row(url).owner == "host-a:1:aa"
    release(url, "job", "host-a:1:aa")
    assert _row(url) is None
    acquire(url, "job", "host-b:2:bb", "run B", ttl_s=60)
    assert _row(url).holder == "run B"


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(url: str) -> None:
    # Another host's holder: only its heartbeat tells whether it lives.
    acquire(url, "job", "elsewhere:1:aa", "run A", ttl_s=30)
    _age_heartbeat(url, 29)
    with pytest.raises(LeaseHeld):
        acquire(url, "job", "host-b:2:bb", "run B", ttl_s=30)
    _age_heartbeat(url, 31)
    acquire(url, "job", "host-b:2:bb", "run B", ttl_s=30)
    assert _row(url).owner == "host-b:2:bb"
    assert renew(url, "job", "elsewhere:1:aa") is False
    assert renew(url, "job", "host-b:2:bb") is True


def test_a_holder_whose_process_died_on_this_host_is_taken_over_at_once(url: str) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    owner = process_owner().replace(f":{os.getpid()}:", f":{gone.stdout.strip()}:")
    acquire(url, "job", owner, "a run that crashed", ttl_s=3600)
    acquire(url, "job", "host-b:2:bb", "run B", ttl_s=3600)
    assert _row(url).owner == "host-b:2:bb"


def test_held_lease_renews_releases_and_reports_a_takeover(url: str) -> None:
    with held_lease(url, "job", "run A", ttl_s=30) as lease:
        before = _row(url).heartbeat_at
        lease.check()  # renews: still ours
        assert _row(url).heartbeat_at > before
        _age_heartbeat(url, 31)
        acquire(url, "job", "elsewhere:2:bb", "run B", ttl_s=30)
        with pytest.raises(LeaseLost, match="took it over"):
            lease.check()
    assert _row(url).owner == "elsewhere:2:bb"  # the lost lease is not released by A


def test_held_lease_is_given_back_when_the_block_fails(url: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), held_lease(url, "job", "run A", ttl_s=30):
        raise RuntimeError("boom")
    assert _row(url) is None


def _take_in_process(url: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    barrier.wait()
    try:
        acquire(url, "job", process_owner(), f"pid {os.getpid()}", ttl_s=60)
        results.put("took")
    except LeaseHeld:
        results.put("refused")
    barrier.wait()  # the winner lives until all have tried: a dead holder is taken over


def test_takers_racing_in_processes_get_exactly_one_lease(url: str) -> None:
    get_engine(url)  # the schema first: the race is for the lease, not the migration
    context = multiprocessing.get_context("spawn")  # not fork: this process may hold threads
    count = 4
    barrier, results = context.Barrier(count), context.Queue()
    workers = [
        context.Process(target=_take_in_process, args=(url, barrier, results)) for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * count
    outcomes = sorted(results.get(timeout=5) for _ in range(count))
    assert outcomes == ["refused"] * (count - 1) + ["took"]
