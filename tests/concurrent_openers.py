"""Targets of processes that tests spawn to race on a database. Each spawned child imports this
module afresh: it imports the checkpoints' database code only, not Ray, Prefect or PyIceberg."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier

from checkpoints.database import get_engine


def _open_after(url: str, barrier: Barrier) -> None:
    barrier.wait()
    get_engine(url)  # upgrades the schema to head on first use


def open_in_processes(url: str, count: int = 3) -> list[int | None]:
    """Exit codes of `count` processes that open (and so migrate) the database at one moment."""
    context = multiprocessing.get_context("spawn")  # not fork: the test process holds threads
    barrier = context.Barrier(count)
    processes = [context.Process(target=_open_after, args=(url, barrier)) for _ in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    return [process.exitcode for process in processes]
