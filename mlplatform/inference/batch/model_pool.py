"""Warm model pools: the actors that hold a model outlive the batch run that started them.

Batch inference's model stage (model_stage.ModelStage, light Ray Data actors that build the
prediction rows and write them) sends each batch's features to a pool and gets the class
probabilities back. A pool is one idea in two forms:

- fused mode: `PoolModel`, `pool_size` named, detached Ray actors per namespace and model name
  (and user predictor classes).
  Each keeps the verified models it was asked for (the two most recent versions, by digest), so
  a run of a version already loaded predicts at once, and a promoted version is loaded in the
  same warm process, without a new one;
- separated mode: the version's Ray Serve application (predictors.deploy_batch_model), whose
  replicas Serve keeps and scales.

Both outlive the run and shrink to zero when idle: a pool actor with no call for `pool_idle_s`
exits; the Serve application scales to zero replicas after the same time. A pool actor that dies
(a crash, a kill, its node lost) is created again on the next call that finds it gone.

Pool actors hold no logical CPU (an idle pool must not starve the cluster): the model stage's
actors that call them hold the run's CPUs (actor_num_cpus each) while the run lasts. GPUs are
held (actor_num_gpus): a GPU model needs its device.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray
from ray import cloudpickle

from mlplatform.connectors.niceness import set_niceness
from mlplatform.inference.predictions import label_order
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings

if TYPE_CHECKING:
    from mlplatform.inference.batch.model_stage import UnitWork

RAY_NAMESPACE = "mlplatform"  # detached named actors are looked up in one Ray namespace
MODELS_KEPT = 2


def in_label_order(model: Any, ref: ModelRef, features: np.ndarray) -> np.ndarray:
    """The model's class probabilities of the rows, one column per label of ref.label_names
    (a model trained on some of the classes gets zeros for the others)."""
    return label_order(model.predict_proba(features), model.classes_, len(ref.label_names))


def pool_prefix(s: Settings) -> str:
    return f"mlp-pool/{s.namespace}/"


def pool_name(s: Settings, index: int) -> str:
    """The pool of the namespace's model, and of the user predictor classes that load it and
    the GPUs they get (a pool's actors keep what they were made with)."""
    made_with = [s.predictor_class, s.predictor_options, s.actor_num_gpus]
    predictor = json.dumps(made_with, sort_keys=True, default=str)
    digest = hashlib.sha256(predictor.encode()).hexdigest()[:8]
    return f"{pool_prefix(s)}{s.resolved_model_name}/{digest}/{index}"


@ray.remote(num_cpus=0, max_restarts=0)
class PoolModel:
    """One warm model actor: the verified models it was asked for, by digest (the most recent
    MODELS_KEPT); exits after `idle_s` without a call (never during one: a first model load on
    a busy node can take longer than idle_s)."""

    def __init__(self, idle_s: float, loader: bytes, niceness: int | None = None) -> None:
        if niceness is not None:
            set_niceness(niceness)
        self.loader: Callable[[ModelRef], Any] = cloudpickle.loads(loader)
        self.idle_s = idle_s
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.last_call, self.calls = time.monotonic(), 0
        threading.Thread(target=self._exit_when_idle, name="pool-idle", daemon=True).start()

    def _exit_when_idle(self) -> None:
        while True:
            idle = time.monotonic() - self.last_call
            if idle >= self.idle_s and not self.calls:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return
            time.sleep(min(max(self.idle_s - idle, 0.0), 5.0) + 0.01)

    @contextmanager
    def _call(self) -> Iterator[None]:
        """A call in progress: the actor is not idle until it ends."""
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1
            self.last_call = time.monotonic()

    def _model(self, ref: ModelRef) -> Any:
        if ref.sha256 not in self.models:
            self.models[ref.sha256] = self.loader(ref)  # verified against its digest
            while len(self.models) > MODELS_KEPT:
                self.models.popitem(last=False)
        self.models.move_to_end(ref.sha256)
        return self.models[ref.sha256]

    def ready(self, ref: ModelRef) -> int:
        """Load the version (if it is not loaded yet); this actor's process id."""
        with self._call():
            self._model(ref)
        return os.getpid()

    def predict_proba(self, ref: ModelRef, features: np.ndarray) -> np.ndarray:
        """Class probabilities of the rows, in ref.label_names order."""
        with self._call():
            return in_label_order(self._model(ref), ref, features)

    def run_units(self, specs: list[dict], work: UnitWork) -> pa.Table:
        """The units read, predicted and written here, beside the model (model_stage.run_units);
        their metadata rows."""
        from mlplatform.inference.batch.model_stage import run_units

        with self._call():
            model = self._model(work.ref)
            return run_units(specs, work, lambda rows: in_label_order(model, work.ref, rows))


def pool_actor(s: Settings, index: int, loader: bytes) -> Any:
    """The pool's actor `index`, created if it does not exist (or no longer does); `loader`
    pickled (cloudpickle)."""
    return PoolModel.options(
        name=pool_name(s, index),
        namespace=RAY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_gpus=s.actor_num_gpus,
    ).remote(s.pool_idle_s, loader, s.batch_niceness)


class PoolClient:
    """The unit stage's side of a fused pool (and the model stage's, with a preprocessor):
    units, or batches of features, go to the pool's actors in turn; a call that finds its actor
    gone creates it again and is sent again (_again_if_gone)."""

    def __init__(self, s: Settings, ref: ModelRef, loader: Callable, timeout_s: float) -> None:
        self.s, self.ref, self.timeout_s = s, ref, timeout_s
        # Pickled: the unit stage's actors that unpickle this client never import the loader's
        # modules (the registry: SQLAlchemy), only a pool actor made anew does.
        self.loader = cloudpickle.dumps(loader)
        self.actors: dict[int, Any] = {}
        self.turn = random.randrange(s.pool_size)  # the model stage's actors start apart

    def _actor(self, index: int) -> Any:
        if index not in self.actors:
            self.actors[index] = pool_actor(self.s, index, self.loader)
        return self.actors[index]

    def _get(self, index: int, sent: Any, timeout_s: float) -> Any:
        """The result of a call sent to actor `index`; an actor found gone is forgotten (the
        next _actor(index) creates it again) and the error raised for _again_if_gone."""
        try:
            return ray.get(sent, timeout=timeout_s)
        except ray.exceptions.RayActorError:
            self.actors.pop(index, None)
            raise

    def __call__(self, features: np.ndarray) -> np.ndarray:
        index = self.turn % self.s.pool_size
        self.turn += 1

        def call() -> np.ndarray:
            sent = self._actor(index).predict_proba.remote(self.ref, features)
            try:
                return self._get(index, sent, self.timeout_s)
            except ray.exceptions.GetTimeoutError as error:
                message = f"batch of {len(features)} rows took over {self.timeout_s} s"
                raise TimeoutError(message) from error

        return _again_if_gone(call)

    def _send(self, index: int, spec: dict, work: ray.ObjectRef) -> Any:
        return self._actor(index).run_units.remote([spec], work)

    def _unit_result(
        self, index: int, spec: dict, work: ray.ObjectRef, sent: Any, timeout_s: float
    ) -> pa.Table:
        """The unit's metadata rows: the call already sent, then, while its actor is found
        gone, the unit sent again to the actor created anew."""
        first = iter([sent])

        def call() -> pa.Table:
            ref = next(first, None)
            return self._get(
                index, self._send(index, spec, work) if ref is None else ref, timeout_s
            )

        return _again_if_gone(call)

    def run_units(self, specs: list[dict], work: ray.ObjectRef) -> pa.Table:
        """Each unit to the pool's actors in turn, all at once, with the run's UnitWork (in
        the object store: this process never unpickles it); their metadata rows. A unit whose
        actor is gone is sent again (_again_if_gone); one that fails otherwise, or is not done
        in time, is an error row. The time: batch_timeout_s per batch_size rows of the unit,
        times the unit stage's actors (their units may be queued before it at the pool actor)."""
        calls = []
        for spec in specs:
            index = self.turn % self.s.pool_size
            self.turn += 1
            calls.append((spec, index, self._send(index, spec, work)))
        parts = []
        for spec, index, sent in calls:
            batches = max(1, math.ceil(spec.get("rows", 1) / self.s.batch_size))
            timeout_s = self.timeout_s * batches * self.s.actor_pool_max
            try:
                parts.append(self._unit_result(index, spec, work, sent, timeout_s))
            except ray.exceptions.GetTimeoutError:
                parts.append(_failed(spec, f"predict failed: unit not done in {timeout_s:.0f} s"))
            except Exception as error:
                parts.append(_failed(spec, f"predict failed: {error!r}"))
        return pa.concat_tables(parts)


def _failed(spec: dict, error: str) -> pa.Table:
    from mlplatform.inference.batch.unit_files import failed_parts  # PyIceberg: only if needed

    return failed_parts(spec["unit"], error)


def _again_if_gone(call: Callable[[], Any], tries: int = 6) -> Any:
    """`call`, made again while it finds a pool actor gone (killed, crashed, or exiting idle:
    its name is free once Ray has it dead, and the next call creates the actor anew)."""
    for attempt in range(tries):
        try:
            return call()
        except ray.exceptions.RayActorError:
            if attempt == tries - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def warm_up(s: Settings, ref: ModelRef, loader: Callable) -> list[int]:
    """Every actor of the pool created (if needed) with the version loaded; their process ids."""

    blob = cloudpickle.dumps(loader)

    def ready() -> list[int]:
        calls = [pool_actor(s, i, blob).ready.remote(ref) for i in range(s.pool_size)]
        return ray.get(calls, timeout=s.stall_timeout_s)

    return _again_if_gone(ready)


def pool_actor_names(prefix: str) -> list[str]:
    """The names of the live pool actors whose names start with `prefix`."""
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == RAY_NAMESPACE and actor["name"].startswith(prefix)
    ]


def release_pools(prefix: str) -> list[str]:
    """Kill the pool actors whose names start with `prefix` (pool_prefix(s): a namespace's);
    their names. Idle pools go by themselves; `make down` stops them all."""
    names = pool_actor_names(prefix)
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=RAY_NAMESPACE), no_restart=True)
        except ValueError:  # gone meanwhile
            continue
    return names
