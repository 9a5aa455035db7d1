"""Thread niceness for Ray workers. Ray starts its workers at 15, below the broker and any other
process on the node: right for batch work on a shared node, wrong for a latency-bound consumer
or replica, and a handicap for a batch run on a node that is otherwise busy."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def set_niceness(niceness: int) -> dict[int, int]:
    """Every thread of this process at `niceness` (Linux keeps one per thread); {thread: its
    niceness before}. Raising priority needs root or CAP_SYS_NICE: without it the threads keep
    theirs, and a warning says so."""
    before: dict[int, int] = {}
    tasks = "/proc/self/task"
    refused = False
    for tid in [int(t) for t in os.listdir(tasks)] if os.path.isdir(tasks) else []:
        try:
            before[tid] = os.getpriority(os.PRIO_PROCESS, tid)
            if before[tid] != niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except PermissionError:
            refused = True
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    if refused:
        logger.warning("cannot set niceness %d (no privilege); staying at Ray's", niceness)
    return before


@contextmanager
def at_niceness(niceness: int | None) -> Iterator[None]:
    """The block at `niceness` (None: as Ray runs it), then each thread as it was: a pooled task
    worker runs other tasks afterwards."""
    before = set_niceness(niceness) if niceness is not None else {}
    try:
        yield
    finally:
        for tid, value in before.items():
            try:
                os.setpriority(os.PRIO_PROCESS, tid, value)
            except (PermissionError, ProcessLookupError):
                continue
