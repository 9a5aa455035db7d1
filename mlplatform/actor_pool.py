"""Drive a pool of Pulsar-consuming Ray actors until N messages are done or T seconds pass.

Each actor offers `poll(limit) -> (consumed, done, failed)`, handling at most `limit` messages,
and `close()`; `closing` closes and removes them however the run ends. The driver never asks
for more than is left, so a bounded run stops at exactly N done messages; idle actors are asked
first, since they may hold prefetched messages.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import ray


def drive(
    actors: list[ray.actor.ActorHandle], batch: int, max_messages: int | None, timeout_s: float
) -> tuple[int, int, int]:
    """Poll the actors until `max_messages` are done or `timeout_s` passes."""
    started = time.monotonic()
    consumed = done = failed = 0
    pending: dict[ray.ObjectRef, tuple[ray.actor.ActorHandle, int]] = {}
    idle = deque(actors)

    def submit_idle() -> None:
        while idle and time.monotonic() - started < timeout_s:
            reserved = sum(limit for _, limit in pending.values())
            left = batch if max_messages is None else min(batch, max_messages - done - reserved)
            if left <= 0:
                return
            actor = idle.popleft()
            pending[actor.poll.remote(left)] = (actor, left)

    submit_idle()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        actor, _limit = pending.pop(ready[0])
        c, d, f = ray.get(ready[0])
        consumed, done, failed = consumed + c, done + d, failed + f
        idle.append(actor)
        submit_idle()
    return consumed, done, failed


@contextmanager
def closing(actors: list[ray.actor.ActorHandle]) -> Iterator[list[ray.actor.ActorHandle]]:
    try:
        yield actors
    finally:
        ray.get([a.close.remote() for a in actors])
        for actor in actors:
            ray.kill(actor)
