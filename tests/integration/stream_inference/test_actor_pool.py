"""The stream pool's driver (`actor_pool.drive`) on real Ray, with small stand-in actors (no
broker): an actor killed mid-run has its slot taken by a spare at once, and comes back from
Ray's restart as the new spare."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import ray

from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.stream.actor_pool import Totals, drive
from mlplatform.settings import Settings
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

ITEMS = 1000


@ray.remote(num_cpus=0)
class Supply:
    """A finite stream the stand-ins read from."""

    def __init__(self, items: int) -> None:
        self.left = items

    def take(self, limit: int) -> int:
        n = min(limit, self.left)
        self.left -= n
        return n

    def remaining(self) -> int:
        return self.left


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StandIn:
    """Reads nothing until given a slot, as the stream actors (`StreamConsumer.take`)."""

    def __init__(self, supply: ray.actor.ActorHandle) -> None:
        self.supply, self.slot = supply, None

    def take(self, slot: int) -> None:
        if self.slot is not None:
            raise RuntimeError(f"already has slot {self.slot}")
        self.slot = slot

    def poll(self, limit: int) -> tuple[int, int, int]:
        if self.slot is None:
            raise RuntimeError("poll before take")
        time.sleep(0.05)
        n = ray.get(self.supply.take.remote(min(limit, 5)))
        return n, n, 0

    def whoami(self) -> tuple[int | None, int]:
        return self.slot, os.getpid()


def test_a_spare_takes_a_lost_actors_slot_and_the_lost_one_becomes_the_spare(
    isolated: Settings,
) -> None:
    connect(isolated)
    supply = Supply.remote(ITEMS)
    workers = [StandIn.remote(supply) for _ in range(2)]
    spare = StandIn.remote(supply)

    def assign(actor: ray.actor.ActorHandle, slot: int) -> ray.ObjectRef:
        return actor.take.remote(slot)

    ray.get([assign(w, i) for i, w in enumerate(workers)])
    outcome: dict[str, Totals | BaseException] = {}

    def run() -> None:
        try:
            outcome["totals"] = drive(
                workers, 50, ITEMS, 120, dry_grace_s=1.0, spares=[spare], assign=assign
            )
        except BaseException as error:  # reported by the assertion below
            outcome["totals"] = error

    driver = threading.Thread(target=run)
    driver.start()
    try:
        wait_until(
            "a quarter read", lambda: ray.get(supply.remaining.remote()) < 3 * ITEMS // 4, 60, 0.05
        )
        slot, killed_pid = ray.get(workers[0].whoami.remote())
        assert slot == 0
        spare_pid = ray.get(spare.whoami.remote())[1]
        os.kill(killed_pid, signal.SIGKILL)
        wait_until(
            "the spare in slot 0", lambda: ray.get(spare.whoami.remote()) == (0, spare_pid), 60, 0.1
        )
        driver.join(timeout=150)
        totals = outcome["totals"]
        assert isinstance(totals, Totals), totals
        assert totals.restarts == 1
        assert ray.get(supply.remaining.remote()) == 0, "the run ended before the stream did"
        # Restarted by Ray, it reads nothing: the pool's spare now.
        slot, pid = ray.get(workers[0].whoami.remote())
        assert slot is None and pid != killed_pid
        assert ray.get(workers[1].whoami.remote())[0] == 1
    finally:
        driver.join(timeout=150)
        for actor in [*workers, spare, supply]:
            ray.kill(actor)
