"""Helpers that tests share (plain functions; fixtures stay in conftest.py): settings with
resources of a test module's own, a second instance of an infra service, the environment that
hands settings to another process (or to a flow run in this one), waiting on observable state,
threads started together, the Ray actors of this test process, and the flow runs a deployment's
trigger started."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import pytest
from sklearn.dummy import DummyClassifier

from mlplatform.registry import model_registry
from mlplatform.settings import Settings, get_settings

T = TypeVar("T")


def module_settings(isolated: Settings, name: str, **overrides: object) -> Settings:
    """The session's settings with a namespace, topics, subscription, landing folder, database
    and Serve application (name and route) of one test module's own (`name`), plus
    `overrides`."""
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    return isolated.model_copy(
        update={
            "namespace": f"{isolated.namespace}_{name}",
            "features_topic": f"{isolated.features_topic}-{tag}",
            "predictions_topic": f"{isolated.predictions_topic}-{tag}",
            "dead_letter_topic": f"{isolated.dead_letter_topic}-{tag}",
            "quarantine_topic": f"{isolated.quarantine_topic}-{tag}",
            "raw_events_topic": f"{isolated.raw_events_topic}-{tag}",
            "stream_subscription": tag,
            "landing_dir": isolated.resolved_landing_dir.parent / f"landing-{tag}",
            "database_url": isolated.resolved_database_url.replace(".db", f"-{tag}.db"),
            # Never the default application ("model" at "/") that a user's `mlp serve` runs.
            "serve_app_name": f"model-it-{tag}",
            "serve_route_prefix": f"/it-{tag}",
            **overrides,
        }
    )


@contextmanager
def extra_service(name: str, s: Settings, what: str) -> Iterator[Settings]:
    """A second instance of an infra service (`name` in infra.services.SERVICES) with settings
    `s` (own ports and state), stopped however the test ends; one that does not start fails
    the test."""
    from infra.services import SERVICES, ServiceError, start, stop

    service = SERVICES[name]
    try:
        try:
            start(service, s)
        except ServiceError as error:
            pytest.fail(f"{what} did not start: {error}")
        yield s
    finally:
        stop(service, s)


def settings_env(s: Settings) -> dict[str, str]:
    """The MLP_ variables that make another process (a flow run) use settings `s`."""
    fields = (
        "namespace",
        "features_topic",
        "predictions_topic",
        "dead_letter_topic",
        "quarantine_topic",
        "stream_subscription",
        "landing_dir",
        "database_url",
        "commit_every_rows",
        "raw_events_topic",
    )
    return {f"MLP_{name.upper()}": str(getattr(s, name)) for name in fields}


@contextmanager
def settings_in_process(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[None]:
    """`env` (MLP_ variables, e.g. settings_env's) in this process's environment, read by
    get_settings(): a flow or the CLI run here inside the block uses those settings."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()


def register_constant_model(s: Settings, constant: int = 0) -> model_registry.ModelVersion:
    """A registry version of a model that always answers class `constant` (0 or 1), trained on
    feature x, labels no and yes, snapshot 123."""
    model = DummyClassifier(strategy="constant", constant=constant).fit([[0.0], [1.0]], [0, 1])
    return model_registry.register(
        s,
        model,
        family="dummy",
        params={"constant": constant},
        metrics={"accuracy": 0.5},
        training_table="ml.features",
        training_snapshot_id=123,
        training_rows=2,
        feature_order=["x"],
        label_names=["no", "yes"],
    )


def wait_until(what: str, check: Callable[[], T], timeout_s: float, every_s: float = 0.5) -> T:
    """Poll `check` until it returns something truthy (returned); fail the test naming `what`
    after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def run_together(target: Callable[..., T], calls: Sequence[tuple], timeout_s: float) -> list[T]:
    """`target(*args)` for each args in `calls`, each in a thread of its own, released at the
    same moment; their results in order. A thread that raised fails the test with its error,
    one still running after `timeout_s` fails it too."""
    barrier = threading.Barrier(len(calls), timeout=timeout_s)
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, args: tuple) -> None:
        try:
            barrier.wait()
            results[i] = target(*args)
        except BaseException as error:  # a thread's exception would otherwise go unseen
            errors.append(error)
            barrier.abort()  # the others stop waiting for it

    threads = [
        threading.Thread(target=run, args=(i, args), daemon=True) for i, args in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), None)
    if first or errors:
        raise AssertionError(f"a thread of {target.__name__} raised: {first or errors[0]!r}")
    stuck = sum(thread.is_alive() for thread in threads)
    assert not stuck, f"{stuck} thread(s) of {target.__name__} still running after {timeout_s}s"
    return results


def own_actor_pids(s: Settings, class_name_part: str) -> list[int]:
    """Process ids of the alive Ray actors whose class name contains `class_name_part` and that
    this test process created (its Ray job): never another test's or a user's actors on the
    shared cluster."""
    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    actors = list_actors(
        address=s.ray_address, filters=[("state", "=", "ALIVE"), ("job_id", "=", job)]
    )
    return [a.pid for a in actors if class_name_part in a.class_name and a.pid]


def cancel_triggered_runs(deployment: str, since: datetime, timeout_s: float = 120) -> list:
    """The flow runs of `deployment` ('<flow>/<name>') that an automation (the deployment's
    trigger) created after `since` (timezone-aware), waited for (at least one), each cancelled
    at once and checked to end Cancelled: a triggered run works on the worker's settings (the
    default namespace), which a test must leave alone. The runs, as read at the end."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.states import Cancelled, Cancelling

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))

        def triggered() -> list:
            return [
                run
                for run in client.read_flow_runs(deployment_filter=only)
                if run.created_by is not None
                and run.created_by.type == "AUTOMATION"
                and run.created is not None
                and run.created >= since
            ]

        runs = wait_until(f"a {deployment} run started by its trigger", triggered, timeout_s)
        for run in runs:
            state = client.read_flow_run(run.id).state
            if state is None or not state.is_final():
                # A run a worker holds is killed by it on Cancelling; one not picked up yet
                # is simply Cancelled.
                new = Cancelling() if state and state.is_running() else Cancelled()
                client.set_flow_run_state(run.id, new, force=True)

        def ended() -> list | None:
            now = [client.read_flow_run(run.id) for run in runs]
            return now if all(run.state and run.state.is_final() for run in now) else None

        done = wait_until(f"the triggered {deployment} runs to end", ended, 90, 1.0)
    states = {str(run.id): run.state.name for run in done}
    assert set(states.values()) == {"Cancelled"}, f"a triggered run was not cancelled: {states}"
    return done


def predictions_target(local_dir: Any, run_id: str = "run-1", snapshot_id: int = 99) -> Any:
    """A WriteTarget on the predictions table of a local catalog under `local_dir`."""
    from mlplatform.connectors.iceberg_tables import ensure_tables, load_table
    from mlplatform.inference.batch.unit_files import WriteTarget

    s = Settings(_env_file=None, local_dir=str(local_dir))
    ensure_tables(s)
    return WriteTarget.of(load_table(s, s.predictions_table), s.key_column, run_id, snapshot_id)


def written_rows(parts: Any) -> Any:
    """Every row of the data files that the model stage's metadata rows name, in part order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlplatform.inference.batch.unit_files import part_files

    files = [f for row in parts.to_pylist() for f in part_files(row)]
    tables = [pq.read_table(f.file_path.removeprefix("file://")) for f in files]
    return pa.concat_tables(tables) if tables else None


def pool_pids(s: Settings) -> dict[str, int]:
    """{name: process id} of the namespace's live warm-pool actors (inference.batch.model_pool)."""
    from ray.util.state import list_actors

    from mlplatform.inference.batch.model_pool import pool_actor_names, pool_prefix

    names = set(pool_actor_names(pool_prefix(s)))
    if not names:
        return {}
    actors = list_actors(address=s.ray_address, filters=[("state", "=", "ALIVE")], limit=10_000)
    return {a.name: a.pid for a in actors if a.name in names and a.pid}
