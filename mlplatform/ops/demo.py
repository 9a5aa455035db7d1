"""The demo: write raw data, run every flow as a Prefect deployment run, reconcile the counts;
for two datasets side by side on the same services (the configured one and a second bundled one,
each with its own tables, topics, landing folder and model: Settings.for_dataset).

Usage: python -m mlplatform.ops.demo [--rows N] [--malformed M] [--datasets iris,wine]
Needs the services (`make up`) and the deployments (`prefect deploy --all`); `make demo` does both.
Counts are read back from Iceberg and Pulsar independently of what the flows report.
Exit code 0 when every count of every dataset reconciles, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

from pyiceberg.expressions import EqualTo

from checkpoints.store import CheckpointStore
from mlplatform.connectors.iceberg_tables import count_rows, ensure_tables, load_table
from mlplatform.connectors.pulsar_io import ensure_partitioned_topic, ensure_subscription, read_all
from mlplatform.dataset.prediction_record import RUN_ID
from mlplatform.registry import model_registry
from mlplatform.sample_data.demo_rows import write_demo_raw
from mlplatform.settings import TOPIC_FIELDS, Settings, get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun


@dataclass
class Check:
    name: str
    expected: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass
class DemoReport:
    dataset: str
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    model_version: int | None = None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


# Where the demo's data lives: set in the demo's environment, these go with each deployment
# run, so the runs work on the data the demo writes and reconciles (not the worker's default).
PLACEMENT = (
    "NAMESPACE",
    "DATASET",
    "FEATURES_TOPIC",
    "PREDICTIONS_TOPIC",
    "DEAD_LETTER_TOPIC",
    "QUARANTINE_TOPIC",
    "RAW_EVENTS_TOPIC",
    "STREAM_SUBSCRIPTION",
    "LANDING_DIR",
    "DATABASE_URL",
    "CATALOG_URL",
)


def placement_env(environ: dict[str, str]) -> dict[str, str]:
    """The MLP_ placement variables set in `environ`, for the deployment runs' environment.
    A database URL with a password stays out (job variables are stored on the Prefect
    server): the worker must have that one itself."""
    from sqlalchemy.engine import make_url

    env = {f"MLP_{n}": environ[f"MLP_{n}"] for n in PLACEMENT if environ.get(f"MLP_{n}")}
    for name in ("MLP_DATABASE_URL", "MLP_CATALOG_URL"):
        if name in env and make_url(env[name]).password is not None:
            del env[name]
    return env


def dataset_env(s: Settings, env: dict[str, str]) -> dict[str, str]:
    """The placement `env` with the names of the dataset of `s` (its own tables, topics,
    subscription and landing folder), so that the deployment runs work on that dataset."""
    own = {
        "MLP_DATASET": s.dataset,
        "MLP_NAMESPACE": s.namespace,
        "MLP_STREAM_SUBSCRIPTION": s.stream_subscription,
        "MLP_LANDING_DIR": str(s.resolved_landing_dir),
        **{f"MLP_{topic.upper()}": getattr(s, topic) for topic in TOPIC_FIELDS},
    }
    return {**env, **own}


def run_deployment_and_wait(
    name: str,
    parameters: dict | None = None,
    timeout_s: float = 900,
    env: dict[str, str] | None = None,
):
    """Start a deployment run through the worker (with `env` added to its environment) and
    wait for it; fail loudly if it fails."""
    return _completed(name, _start(name, parameters, timeout_s, env))


def _start(name: str, parameters: dict | None, timeout_s: float, env: dict[str, str] | None):
    """A deployment run, with `env` added to its environment, once it ended (or timed out)."""
    from prefect.deployments import run_deployment

    job_variables = {"env": env} if env else None
    return run_deployment(
        name, parameters=parameters or {}, timeout=timeout_s, job_variables=job_variables
    )


def _completed(name: str, flow_run):
    if not flow_run.state or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        raise RuntimeError(f"deployment run {name} ended {state}: see the Prefect UI")
    return flow_run


def _wait_until_final(client: SyncPrefectClient, run: FlowRun, deadline: float, timeout_s: float):
    """The run's final state, polled every 2 s until `deadline`."""
    while not (state := client.read_flow_run(run.id).state).is_final():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.name} still running after {timeout_s} s")
        time.sleep(2)
    return state


def _active_runs(client: SyncPrefectClient, deployment_id: UUID) -> list[FlowRun]:
    """The deployment's runs that are pending, running or being cancelled."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    active = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))
        ),
    )


# The message of a deployment run that Prefect cancels for its deployment's concurrency limit.
CONCURRENCY_LIMIT = "Deployment concurrency limit reached."


def run_retrain_and_wait(
    name: str,
    parameters: dict | None = None,
    timeout_s: float = 900,
    env: dict[str, str] | None = None,
):
    """The retrain deployment's run. One retrain at a time: when another run holds the
    deployment's slot (the retrain-due trigger fires as the preprocess run ends, or the other
    dataset's demo retrains), ours is cancelled; then the demo waits for that run, and joins it
    when it trained the same data (the same placement env), else runs its own again (also when
    the run that held the slot has ended by the time it looks)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    for _ in range(3):
        flow_run = _start(name, parameters, timeout_s, env)
        if not flow_run.state or not flow_run.state.is_cancelled():
            break
        with get_client(sync_client=True) as client:
            others = _active_runs(client, flow_run.deployment_id)
            if not others:
                if flow_run.state.message == CONCURRENCY_LIMIT:
                    continue  # the run that held the slot ended meanwhile: ours again
                # cancelled by the flow's own lease: a retrain outside Prefect
                raise RuntimeError(f"{name}: {flow_run.state.message}")
            for other in others:
                print(f"demo: retrain {flow_run.name} cancelled; waiting for {other.name}")
                state = _wait_until_final(client, other, deadline, timeout_s)
                same_data = ((other.job_variables or {}).get("env") or {}) == (env or {})
                if same_data and state.is_completed():
                    return other
    return _completed(name, flow_run)


def _predictions_for(s: Settings, run_id: str) -> int:
    table = load_table(s, s.predictions_table)
    return len(table.scan(row_filter=EqualTo(RUN_ID, run_id), selected_fields=(RUN_ID,)).to_arrow())


def run_demo(s: Settings, rows: int, malformed: int, env: dict[str, str]) -> DemoReport:
    """The pipeline's deployment runs on the dataset of `s` (`env`: their placement)."""
    report = DemoReport(s.dataset_name)
    catalog = ensure_tables(s)
    ensure_partitioned_topic(s, s.features_topic, s.features_topic_partitions)
    ensure_subscription(s, s.features_topic, s.stream_subscription)
    features = catalog.load_table(s.table_id(s.features_table))
    quarantine = catalog.load_table(s.table_id(s.quarantine_table))
    before_features, before_quarantine = count_rows(features), count_rows(quarantine)
    before_topic = len(read_all(s, s.features_topic))
    before_predictions = len(read_all(s, s.predictions_topic))
    batch = write_demo_raw(s, rows, malformed, seed=int(time.time()))

    def timed(stage: str, name: str, parameters: dict | None = None, run=run_deployment_and_wait):
        started = time.monotonic()
        flow_run = run(name, parameters, env=env)
        report.timings[stage] = round(time.monotonic() - started, 1)
        return flow_run

    timed("preprocess", "preprocess/default")
    features, quarantine = features.refresh(), quarantine.refresh()
    published = len(read_all(s, s.features_topic)) - before_topic
    report.checks += [
        Check(
            "feature rows = valid input rows",
            batch.valid_rows,
            count_rows(features) - before_features,
        ),
        Check(
            "quarantine rows = malformed input rows",
            batch.malformed_rows,
            count_rows(quarantine) - before_quarantine,
        ),
        Check("feature messages = valid input rows", batch.valid_rows, published),
    ]

    timed("retrain", "retrain/default", run=run_retrain_and_wait)
    champion = model_registry.get_version(s)
    report.model_version, report.accuracy = champion.version, champion.metrics["accuracy"]

    batch_run = timed("batch-inference", "batch-inference/default")
    store = CheckpointStore(s.resolved_database_url)
    try:  # a new checkpointed run takes the flow run's id
        run_id = store.get_run(str(batch_run.id)).run_id
    except LookupError:  # it continued an unfinished run instead
        snapshot = features.current_snapshot()
        run = store.find_succeeded(
            "batch-inference", s.table_id(s.features_table), snapshot.snapshot_id, champion.version
        )
        run_id = run.run_id if run else ""
    predicted = _predictions_for(s, run_id)
    report.checks.append(Check("prediction rows = feature rows", count_rows(features), predicted))

    timed(
        "stream-inference",
        "stream-inference/default",
        {"max_messages": published, "timeout_s": 300},
    )
    streamed = len(read_all(s, s.predictions_topic)) - before_predictions
    report.checks.append(Check("stream predictions = feature messages sent", published, streamed))
    return report


def run_demos(s: Settings, datasets: list[str], rows: int, malformed: int) -> list[DemoReport]:
    """run_demo for each dataset, at the same time, on the same services and database."""
    env = placement_env(dict(os.environ))
    each = [s.for_dataset(name) for name in datasets]
    with ThreadPoolExecutor(len(each)) as pool:
        runs = [pool.submit(run_demo, d, rows, malformed, dataset_env(d, env)) for d in each]
        return [run.result() for run in runs]


def print_report(s: Settings, report: DemoReport) -> None:
    width = max(len(check.name) for check in report.checks)
    print(f"\n=== demo summary: {report.dataset} ===")
    for check in report.checks:
        mark = "ok " if check.ok else "MISMATCH"
        print(
            f"  {check.name:<{width}}  expected {check.expected:>7}  got {check.actual:>7}  {mark}"
        )
    print(
        f"  champion: model {report.dataset!r} v{report.model_version}, "
        f"holdout accuracy {report.accuracy:.3f}"
    )
    print("  stage seconds: " + json.dumps(report.timings))
    print(f"  Prefect UI: {s.prefect_api_url.removesuffix('/api')}")
    print("  result: " + ("all counts reconcile" if report.ok else "COUNTS DO NOT RECONCILE"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="valid raw rows to write")
    parser.add_argument("--malformed", type=int, default=70, help="malformed raw rows to write")
    parser.add_argument(
        "--datasets",
        help="comma-separated datasets to run side by side (default: the configured one and "
        "the other bundled one of iris, wine)",
    )
    args = parser.parse_args(argv)
    s = get_settings()
    second = "wine" if s.dataset_name != "wine" else "iris"
    datasets = args.datasets.split(",") if args.datasets else [s.dataset_name, second]
    os.environ.setdefault("PREFECT_API_URL", s.prefect_api_url)
    reports = run_demos(s, datasets, args.rows, args.malformed)
    for report in reports:
        print_report(s, report)
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
