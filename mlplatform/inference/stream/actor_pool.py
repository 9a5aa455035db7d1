"""Drive a pool of Pulsar-consuming Ray actors until N messages are done or T seconds pass.

Each actor offers `poll(limit) -> (consumed, done, failed)`, handling at most `limit` messages,
and `close()`; `closing` closes and removes them however the run ends. The driver never asks
for more than is left, so a bounded run stops at exactly N done messages, and near the end it
shares what is left between the actors (a poll may handle many micro-batches); idle actors are
asked first, since they may hold prefetched messages.

After an actor was lost, the counts are no longer exact: a poll lost with it may have
published before it died, which no one counts. A bounded run then goes on until the stream runs
dry and the lost polls make up the difference, rather than stop at N counted. Dry means every
actor found nothing for `dry_grace_s` and, where the driver can ask, the subscription has no
backlog: the broker redelivers what the dead incarnation had not acknowledged only once it has
dropped that consumer, and a restarted actor's polls may come long before that (seconds under
load: a run that ended dry then left those inputs for the next run).

Crash-only recovery: a poll that raises gets its actor killed and restarted by Ray (the actors
are created with `max_restarts`), and an actor that was killed is polled again once Ray has
restarted it. Pulsar redelivers whatever the failed incarnation had not acknowledged. A poll that
raises `max_failures` times in a row fails the run (a bug, not bad luck); an actor out of
restarts is dropped, and the run fails when none is left.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

logger = logging.getLogger(__name__)


POLLS_IN_FLIGHT = 2


@dataclass
class Totals:
    consumed: int = 0
    done: int = 0
    failed: int = 0
    restarts: int = 0


def drive(
    actors: list[ray.actor.ActorHandle],
    batch: int,
    max_messages: int | None,
    timeout_s: float | None,
    max_failures: int = 3,
    dry_grace_s: float = 5.0,
    backlog: Callable[[], int] | None = None,
    spares: list[ray.actor.ActorHandle] | None = None,
    assign: Callable[[ray.actor.ActorHandle, int], ray.ObjectRef] | None = None,
) -> Totals:
    """Poll the actors until `max_messages` are done or `timeout_s` passes (None: forever).

    The clock starts once every actor is constructed (a constructor's error is raised here).
    `backlog`: the subscription's unacknowledged messages, asked of the broker before a run with
    lost polls ends dry: a restarted actor's consumer gets nothing while the broker still holds
    its dead predecessor as the partition's active consumer, so dry is not drained until then.

    `assign(actor, slot)`: have an actor start the work of slot `slot` (the index of its first
    actor in `actors`), for actors that begin nothing in their constructor. A lost actor's
    slot then goes at once to one of `spares` (constructed, idle actors), and the lost one,
    once Ray has restarted it, becomes a spare (or takes its slot back when no spare was left).
    Without `assign`, an actor that Ray restarted goes on with its own work (its constructor).
    """
    spare_pool = deque(spares or [])
    ray.get([actor.__ray_ready__.remote() for actor in [*actors, *spare_pool]])
    started = time.monotonic()
    totals = Totals()
    pending: dict[ray.ObjectRef, tuple[ray.actor.ActorHandle, int]] = {}
    # Two polls in flight per actor: the next is queued at the actor before the last returns,
    # so the driver's round trip never leaves an actor waiting.
    idle = deque(actors * POLLS_IN_FLIGHT)
    failures = {actor: 0 for actor in actors}
    down: set[ray.actor.ActorHandle] = set()
    actors_left = set(actors)
    # A poll lost with its actor may have done up to its limit: once the stream runs dry, a
    # bounded run counts those as done rather than wait for its timeout.
    uncertain = 0
    drained = False
    empty: set[ray.actor.ActorHandle] = set()  # actors whose last poll found nothing
    dry_since: float | None = None  # since when every actor's last poll found nothing

    def in_time() -> bool:
        return timeout_s is None or time.monotonic() - started < timeout_s

    def submit_idle() -> None:
        while idle and in_time() and not drained:
            reserved = sum(limit for _, limit in pending.values())
            left = batch
            if max_messages is not None:  # what is left, shared fairly between the actors
                polls = len(actors_left) * POLLS_IN_FLIGHT
                share = -(-(max_messages - totals.done) // polls)
                left = min(batch, max_messages - totals.done - reserved, share)
                if totals.restarts:  # counts are uncertain after a crash: go on until dry
                    left = batch
            if left <= 0:
                return
            actor = idle.popleft()
            pending[actor.poll.remote(left)] = (actor, left)

    # With `assign`: which slot each working actor has, slots waiting for an actor, and lost
    # actors on their way back (their readiness call answers once Ray has restarted them).
    slot_of = {actor: i for i, actor in enumerate(actors)}
    vacant: deque[int] = deque()
    restarting: dict[ray.ObjectRef, ray.actor.ActorHandle] = {}

    def promote(actor: ray.actor.ActorHandle, slot: int) -> None:
        assert assign is not None
        assign(actor, slot)  # queued before its polls; an error of it fails the first poll
        slot_of[actor] = slot
        actors_left.add(actor)
        failures.setdefault(actor, 0)
        idle.extend([actor] * POLLS_IN_FLIGHT)

    def lose(actor: ray.actor.ActorHandle, restarts: bool) -> None:
        """The actor's slot to a spare, else it waits; the actor, once back, is a spare."""
        slot = slot_of.pop(actor)
        actors_left.discard(actor)
        empty.discard(actor)
        for ref in [ref for ref, (a, _) in pending.items() if a == actor]:
            del pending[ref]  # queued behind the poll it was lost in: they do nothing
        others = [a for a in idle if a != actor]
        idle.clear()
        idle.extend(others)
        if restarts:
            restarting[actor.__ray_ready__.remote()] = actor
        if spare_pool:
            promote(spare_pool.popleft(), slot)
            logger.warning("a consumer actor is down; a spare took its partitions")
        else:
            vacant.append(slot)
            logger.warning("a consumer actor is down; its partitions wait for its restart")

    def come_back(ref: ray.ObjectRef) -> None:
        actor = restarting.pop(ref)
        try:
            ray.get(ref)
        except ActorUnavailableError:  # not up yet
            restarting[actor.__ray_ready__.remote()] = actor
            return
        except ActorDiedError:  # out of restarts
            return
        if vacant:
            promote(actor, vacant.popleft())
        else:
            spare_pool.append(actor)

    submit_idle()
    while pending or (restarting and vacant and in_time() and not drained):
        ready, _ = ray.wait([*pending, *restarting], num_returns=1)
        if ready[0] in restarting:
            come_back(ready[0])
            submit_idle()
            continue
        actor, limit = pending.pop(ready[0])
        try:
            consumed, done, failed = ray.get(ready[0])
        except ActorUnavailableError:  # killed or restarting: Ray brings it back
            if actor not in down:  # only the poll it died in may have done anything
                totals.restarts += 1
                uncertain += limit
                if assign is not None:
                    lose(actor, restarts=True)
                    submit_idle()
                    continue
                down.add(actor)
                logger.warning("a consumer actor is down; polling it again once it restarts")
            time.sleep(0.2)
        except ActorDiedError as error:  # out of restarts: the pool goes on without it
            logger.error("a consumer actor died for good: %s", error)
            if assign is not None:
                lose(actor, restarts=False)
            actors_left.discard(actor)
            if not actors_left and not spare_pool:
                raise RuntimeError("every consumer actor died") from error
            submit_idle()
            continue
        except RayTaskError as error:  # poll raised: its state is unknown, so start it afresh
            failures[actor] += 1
            totals.restarts += 1
            uncertain += limit
            logger.warning("poll failed (%d in a row), restarting: %s", failures[actor], error)
            if failures[actor] >= max_failures:
                raise RuntimeError(f"a consumer failed {max_failures} polls in a row") from error
            ray.kill(actor, no_restart=False)
            if assign is not None:
                lose(actor, restarts=True)
                submit_idle()
                continue
            down.add(actor)  # the poll queued behind this one fails too; it did nothing
        else:
            down.discard(actor)
            failures[actor] = 0
            totals.consumed += consumed
            totals.done += done
            totals.failed += failed
            if consumed == 0:
                empty.add(actor)
            else:
                empty.discard(actor)
            dry = empty >= actors_left and not down and not vacant
            dry_since = (dry_since or time.monotonic()) if dry else None
            if max_messages is not None and dry_since is not None:
                waited = uncertain == 0 or time.monotonic() - dry_since >= dry_grace_s
                drained = waited and totals.done + uncertain >= max_messages
                if drained and uncertain and backlog is not None and backlog() > 0:
                    drained, dry_since = False, None  # redeliveries still to come
        idle.append(actor)
        submit_idle()
    return totals


@contextmanager
def closing(actors: list[ray.actor.ActorHandle]) -> Iterator[list[ray.actor.ActorHandle]]:
    try:
        yield actors
    finally:
        for ref in [a.close.remote() for a in actors]:
            try:
                ray.get(ref)
            except (RayTaskError, RayActorError) as error:  # nothing acknowledged is lost
                logger.warning("closing an actor failed: %s", error)
        for actor in actors:
            ray.kill(actor)
