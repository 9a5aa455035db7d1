"""The Ray Data pipeline of batch inference, and the driver's watch over its output.

Units -> unit stage (light actors, inference.batch.unit_stage) -> the model's warm
pool (fused: Ray actors that outlive the run, on GPUs when actor_num_gpus asks,
inference.batch.model_pool; separated: a Ray Serve deployment), where each unit is read, predicted
and written as data files (inference.batch.unit_files); the driver gets their metadata.
With a user preprocessor the rows go through stages of their own: read (CPU tasks,
inference.batch.units) -> preprocessing (CPU actors) -> model stage (light actors that send the
features to the warm pool and write the predictions).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import ray

from mlplatform.inference.batch.model_pool import PoolClient
from mlplatform.inference.batch.model_stage import ModelStage, ServeClient, UnitWork
from mlplatform.inference.batch.predictors import PreprocessStage, deploy_batch_model
from mlplatform.inference.batch.request import Mode
from mlplatform.inference.batch.unit_files import WriteTarget
from mlplatform.inference.batch.unit_stage import UnitPool, UnitStage
from mlplatform.inference.batch.units import read_units
from mlplatform.inference.user_predictor import model_loader
from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings


class BatchInferenceStalled(RuntimeError):
    """Ray Data produced nothing for too long (typically: no free resources for a stage)."""


def read_stage(s: Settings, units: list[dict], read_kwargs: dict) -> ray.data.Dataset:
    """The units' rows, a Ray task per unit (read_units); the first stage of unit_pipeline.

    At most one read task per cluster CPU at a time: a run is a new Ray job, whose tasks each
    need a worker process started for it, and the raylet starts about one per CPU at a time.
    Uncapped, a run's first read tasks (reader_num_cpus 0.25: 4 per CPU) started their workers
    all at once and the first rows came out after all of them (a trivial pipeline of 8 tasks on
    2 CPUs: 8-12 s uncapped, 1.7-2.5 s capped; docs/benchmarks.md)."""
    readers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
        read_units,
        fn_kwargs={**read_kwargs, "niceness": s.batch_niceness},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=s.reader_num_cpus,
        compute=ray.data.TaskPoolStrategy(size=readers),
    )


def batch_model_loader(s: Settings) -> Callable[[ModelRef], Any]:
    """The model stage's model: the registry's estimator or the user's predictor (the user's
    preprocessor runs in a stage of its own before it)."""
    return model_loader(s, model_registry.load_model, preprocess=False)


def unit_pipeline(
    s: Settings,
    ref: ModelRef,
    mode: Mode,
    units: list[dict],
    read_kwargs: dict,
    target: WriteTarget,
    app_name: str | None = None,
    pool: UnitPool | None = None,
) -> ray.data.Dataset:
    """The run's Ray Data pipeline over its unit specs; its output is one metadata row per unit
    part (unit_files): the predictions are written as data files of `target` by the workers.

    Without a user preprocessor: unit specs -> unit stage (actors that hand each unit to the
    model's warm pool, where it is read, predicted and written: no row crosses a process).
    With one: read stage (tasks) -> preprocessing stage (CPU actors) -> model stage (actors that
    send each batch's features to the warm pool and write the predictions).

    read_kwargs: columns (the key column first), row_filter, schema_json (see read_unit).
    In separated mode the model is the Serve application app_name (default: deployed now).
    `pool`: where the unit stage sends units instead (benchmarks.batch_inference's ray_floor).
    """
    if pool is None and mode == "separated":
        app_name = app_name or deploy_batch_model(s, ref, batch_model_loader(s))
        pool = ServeClient(app_name, s.batch_timeout_s)
    elif pool is None:
        pool = PoolClient(s, ref, batch_model_loader(s), s.batch_timeout_s)
    # Fused: the stage's actors hold the run's CPUs for the pool's work (pool actors hold none);
    # separated: the Serve replicas hold their own.
    actors = {
        "compute": ray.data.ActorPoolStrategy(min_size=s.actor_pool_min, max_size=s.actor_pool_max),
        "num_cpus": s.actor_num_cpus if mode == "fused" else 0.1,
        "batch_format": "pyarrow",
    }
    if not s.preprocessor_class:
        work = UnitWork(ref, s.key_column, target, read_kwargs, s.batch_size, s.dataset_spec.ranges)
        specs = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
        return specs.map_batches(
            UnitStage,
            fn_constructor_kwargs={
                "work": [ray.put(work)],
                "pool": pool,
                "niceness": s.batch_niceness,
            },
            batch_size=s.pool_size if mode == "fused" else 1,  # a unit per pool actor
            **actors,
        )
    rows = read_stage(s, units, read_kwargs).map_batches(
        PreprocessStage,
        fn_constructor_kwargs={"ref": ref, "key": s.key_column, "s": s},
        batch_size=s.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=s.actor_pool_max),
        num_cpus=s.preprocessor_num_cpus,
    )
    kwargs = {
        "ref": ref,
        "key": s.key_column,
        "target": target,
        "client": pool,
        "niceness": s.batch_niceness,
        "ranges": s.dataset_spec.ranges,
    }
    return rows.map_batches(
        ModelStage, fn_constructor_kwargs=kwargs, batch_size=s.batch_size, **actors
    )


def watch_output(pipeline: ray.data.Dataset, stall_timeout_s: float) -> Iterator[pa.Table]:
    """The pipeline's output blocks (metadata rows); BatchInferenceStalled when none comes for
    stall_timeout_s (Ray Data waits for resources forever: a run should fail with a reason)."""
    frames: queue.Queue = queue.Queue(maxsize=8)
    end = object()

    def pump() -> None:
        try:
            for table in pipeline.iter_batches(batch_size=None, batch_format="pyarrow"):
                frames.put(table)
            frames.put(end)
        except BaseException as error:  # re-raised in the driver below
            frames.put(error)

    threading.Thread(target=pump, name="ray-data-output", daemon=True).start()
    while True:
        try:
            item = frames.get(timeout=stall_timeout_s)
        except queue.Empty:
            raise BatchInferenceStalled(
                f"no prediction came back from Ray Data for {stall_timeout_s:.0f} s; "
                f"cluster resources available: {ray.available_resources()}"
            ) from None
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
