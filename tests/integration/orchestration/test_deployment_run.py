"""A deployment from prefect.yaml runs through the real worker on the process work pool; its
triggers, schedules and the preprocess flow's per-namespace slot on the real Prefect server."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import httpx
import pytest
from prefect.deployments import run_deployment

from mlplatform.connectors.iceberg_tables import count_rows, load_table
from mlplatform.sample_data.demo_rows import write_demo_raw
from mlplatform.settings import Settings
from tasks.namespace_slot import one_run_per_namespace
from tests.helpers import cancel_triggered_runs, module_settings, settings_env, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_settings(isolated: Settings) -> Settings:
    """Tables, topics, landing folder and database of its own, so the counts below see only
    this run."""
    return module_settings(isolated, "deploy")


def test_preprocess_deployment_completes_through_the_worker(
    own_settings: Settings, deployments: None
) -> None:
    write_demo_raw(own_settings, 120, 7, seed=21)
    started = datetime.now(UTC)
    env = {**settings_env(own_settings), "MLP_RETRAIN_MIN_NEW_ROWS": "100"}
    flow_run = run_deployment(name="preprocess/default", job_variables={"env": env}, timeout=600)
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert count_rows(load_table(own_settings, own_settings.features_table)) == 120
    assert count_rows(load_table(own_settings, own_settings.quarantine_table)) == 7
    # 120 new rows >= the threshold of 100: the flow announced that a retrain is due.
    resource = f"mlplatform.table.{own_settings.table_id(own_settings.features_table)}"
    query = {
        "filter": {
            "event": {"name": ["mlplatform.features.retrain-due"]},
            "resource": {"id": [resource]},
        },
        "limit": 10,
    }

    def events() -> list:
        response = httpx.post(f"{own_settings.prefect_api_url}/events/filter", json=query)
        response.raise_for_status()
        return response.json()["events"]

    # The server stores events in batches.
    found = wait_until("the retrain-due event", events, timeout_s=60, every_s=1.0)
    assert [e["payload"]["rows_added"] for e in found] == [120]
    # The retrain deployment's trigger started a run for it, and the appended event one of
    # batch-inference/incremental: cancelled before they work on the worker's (default)
    # namespace.
    cancel_triggered_runs("retrain/default", started)
    cancel_triggered_runs("batch-inference/incremental", started)


def test_incremental_batch_inference_is_scheduled_hourly(deployments: None) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("batch-inference/incremental")
    assert [s.schedule.cron for s in deployment.schedules if s.active] == ["15 * * * *"]
    assert deployment.parameters == {"incremental": True}


def test_retrain_cron_schedule_creates_scheduled_runs(deployments: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/default")
        assert [s.schedule.cron for s in deployment.schedules if s.active] == ["0 3 * * *"]
        runs = []
        deadline = time.monotonic() + 120
        while not runs and time.monotonic() < deadline:
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))
                ),
            )
            # Runs the data trigger created are Scheduled too; only the scheduler's count here.
            runs = [r for r in scheduled if r.auto_scheduled]
            time.sleep(2)
    assert runs, "the scheduler created no run for the retrain deployment's cron schedule"
    starts = [r.expected_start_time for r in runs]
    assert all(t.hour == 3 and t.minute == 0 for t in starts), starts


def test_preprocess_runs_wait_for_their_namespace_only(
    own_settings: Settings, deployments: None
) -> None:
    """The preprocess flow's slot (a global concurrency limit per namespace, on the Prefect
    server): a second run on the namespace waits until the first ends; a run on another
    dataset's namespace goes at once."""
    other = own_settings.for_dataset("wine")
    entered: dict[str, threading.Event] = {n: threading.Event() for n in ("b", "c")}
    release = threading.Event()

    def hold(s: Settings, name: str | None) -> None:
        with one_run_per_namespace(s):
            if name:
                entered[name].set()
            else:
                release.wait(60)

    first = threading.Thread(target=hold, args=(own_settings, None))
    first.start()
    time.sleep(1.0)  # the first holds the slot
    second = threading.Thread(target=hold, args=(own_settings, "b"))
    beside = threading.Thread(target=hold, args=(other, "c"))
    second.start()
    beside.start()
    try:
        assert entered["c"].wait(30), "a run on another namespace waited"
        assert not entered["b"].wait(2.0), "a second run on the namespace did not wait"
    finally:
        release.set()
    assert entered["b"].wait(30), "the waiting run did not get the slot once it was free"
    for thread in (first, second, beside):
        thread.join(30)
