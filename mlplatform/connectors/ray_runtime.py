"""Connect to Ray: the cluster at settings.ray_address, or a private local one."""

from __future__ import annotations

import ray

from mlplatform.settings import Settings


def connect(s: Settings) -> None:
    if ray.is_initialized():
        return
    address = None if s.ray_address == "local" else s.ray_address
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
