"""Following the promoted model, for every consumer that predicts with the champion.

A ChampionFollower holds the model to predict with: a pinned version, or the registry's
champion. `changed()` checks the registry at most every `model_refresh_s` and, when a promotion
or a rollback made another version champion, loads it and switches to it; the stream actors
call it between micro-batches, the serving replicas on a thread of their own. A version that
cannot be loaded (a damaged artifact, an unreachable registry) raises and leaves the loaded
model in place: the next check is one period later.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.registry.model_registry import ModelVersion
from mlplatform.settings import Settings


@dataclass(frozen=True)
class LoadedModel:
    """A registry version, what a worker needs to load it, and the loaded model."""

    row: ModelVersion
    ref: ModelRef
    model: Any


class ChampionFollower:
    """The model to predict with: `pinned_version`, or (None) the champion as of at most
    `model_refresh_s` ago. `load` turns a version's reference into its model."""

    def __init__(
        self,
        s: Settings,
        pinned_version: int | None = None,
        load: Callable[[ModelRef], Any] = model_registry.load_model,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s, self.pinned_version = s, pinned_version
        self._load, self._clock = load, clock
        self.loaded: LoadedModel | None = None
        self.checked_at = -math.inf
        self._lock = threading.Lock()  # one check at a time (request threads and a refresher)

    @property
    def pinned(self) -> bool:
        return self.pinned_version is not None

    def seconds_to_check(self) -> float:
        """Seconds until the next check of the registry is due (0: due now)."""
        return max(0.0, self.checked_at + self.s.model_refresh_s - self._clock())

    def current(self) -> LoadedModel:
        """The model to predict with; when none is loaded yet, it is loaded now (or raises)."""
        if self.loaded is None:
            self.changed()
        assert self.loaded is not None  # changed() loads one or raises
        return self.loaded

    def changed(self) -> LoadedModel | None:
        """When a check is due (every `model_refresh_s`; at once while no model is loaded; a
        pinned version never again once loaded), ask the registry which version to use and
        switch to it if it is not the loaded one: the model switched to, else None."""
        with self._lock:
            if self.loaded is not None and (self.pinned or self.seconds_to_check() > 0):
                return None
            self.checked_at = self._clock()
            row = model_registry.get_version(self.s, self.pinned_version)
            if self.loaded is not None and row.version == self.loaded.ref.version:
                return None
            ref = model_registry.model_ref(row)
            self.loaded = LoadedModel(row, ref, self._load(ref))
            return self.loaded
