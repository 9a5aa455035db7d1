"""Connect to Ray: the cluster at settings.ray_address, or a private local one."""

from __future__ import annotations

import os

import ray

from mlplatform.settings import Settings

# A call to an actor whose process died waits this long for the cluster to say why before it
# fails (Ray's default: 1 s). The stream pool learns of a lost actor by such a call, and gives
# its partitions to a spare then: measured, the loss reached the driver 0.6 s sooner.
DEATH_INFO_WAIT_MS = "100"


def connect(s: Settings) -> None:
    if ray.is_initialized():
        return
    # Read by this process's Ray core worker when it starts (ray.init).
    os.environ.setdefault("RAY_timeout_ms_task_wait_for_death_info", DEATH_INFO_WAIT_MS)
    address = None if s.ray_address == "local" else s.ray_address
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
