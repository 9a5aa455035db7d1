"""One retrain at a time, on real Iceberg and a real SQLite platform database: a run that finds
another one going trains nothing and says why; two started at once train one grid; a crashed
run's lease is taken over; the flow run ends Cancelled with the reason and its artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from checkpoints.database import get_engine
from checkpoints.leases import LeaseRow, held_lease
from mlplatform.registry import model_registry
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import PROJECT_DIR, Settings
from mlplatform.training.retrain import RETRAIN_LEASE, RetrainInProgress, retrain
from tests.helpers import module_settings

pytestmark = pytest.mark.integration

# Forests big enough that a retrain holds its lease for seconds, not milliseconds.
SLOW_GRID = [{"family": "random_forest", "n_estimators": 400, "max_depth": 8}] * 2

# A retrain in a process of its own: says "ready" once imported, starts when the go file
# appears, prints what happened as JSON.
CONTENDER = """
import json, sys, time
from pathlib import Path
from mlplatform.settings import Settings
from mlplatform.training.retrain import RetrainInProgress, retrain
s = Settings(**json.loads(sys.argv[1]))
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
try:
    result = retrain(s, on_ray=False, holder=sys.argv[3])
    print(json.dumps({"trained": [c["version"] for c in result.candidates]}), flush=True)
except RetrainInProgress as refused:
    print(json.dumps({"refused": str(refused)}), flush=True)
"""


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    """A features table and a platform database of this module's own, 600 rows."""
    s = module_settings(isolated, "one_at_a_time", candidate_grid=SLOW_GRID)
    append_features(s, 600, seed=5)
    model_registry.list_versions(s)  # the database at head before processes race for it
    return s


def _overrides(s: Settings) -> str:
    return json.dumps(
        {"namespace": s.namespace, "database_url": s.database_url, "candidate_grid": SLOW_GRID}
    )


def _lease_holder(s: Settings) -> str | None:
    with Session(get_engine(s.resolved_database_url)) as session:
        row = session.get(LeaseRow, RETRAIN_LEASE)
    return row.holder if row else None


def _contender(s: Settings, go: Path, holder: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CONTENDER, _overrides(s), str(go), holder],
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_retrain_that_finds_one_running_trains_nothing_and_says_why(lake: Settings) -> None:
    versions, decisions = model_registry.list_versions(lake), model_registry.list_decisions(lake)
    holder = f"test holder {uuid.uuid4().hex[:6]}"
    with held_lease(lake.resolved_database_url, RETRAIN_LEASE, holder, ttl_s=60):
        with pytest.raises(RetrainInProgress, match=f"another retrain is running.*{holder}"):
            retrain(lake, on_ray=False)
        assert _lease_holder(lake) == holder  # the refused run left the lease alone
    assert len(model_registry.list_versions(lake)) == len(versions)
    assert len(model_registry.list_decisions(lake)) == len(decisions)
    # Once given back, the next retrain trains.
    result = retrain(lake, on_ray=False)
    assert len(result.candidates) == len(SLOW_GRID)
    assert _lease_holder(lake) is None


def test_two_retrains_started_at_once_train_one_grid(lake: Settings, tmp_path: Path) -> None:
    versions, decisions = model_registry.list_versions(lake), model_registry.list_decisions(lake)
    go = tmp_path / "go"
    contenders = {name: _contender(lake, go, name) for name in ("contender A", "contender B")}
    try:
        for process in contenders.values():
            assert process.stdout.readline().strip() == "ready", process.stderr.read()[-3000:]
        go.touch()
        outcomes = {}
        for name, process in contenders.items():
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
            outcomes[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        for process in contenders.values():
            process.kill()
    trained = [name for name, outcome in outcomes.items() if "trained" in outcome]
    refused = [name for name, outcome in outcomes.items() if "refused" in outcome]
    assert len(trained) == 1 and len(refused) == 1, outcomes
    assert f"held by {trained[0]}" in outcomes[refused[0]]["refused"]
    new_versions = model_registry.list_versions(lake)[len(versions) :]
    assert [v.version for v in new_versions] == outcomes[trained[0]]["trained"]
    assert len(model_registry.list_decisions(lake)) == len(decisions) + 1


def test_the_lease_of_a_retrain_that_crashed_is_taken_over(lake: Settings, tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()
    crashing = _contender(lake, go, "a retrain about to be killed")
    try:
        deadline = time.monotonic() + 120
        while _lease_holder(lake) != "a retrain about to be killed":
            assert crashing.poll() is None, crashing.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the contender never took the lease"
            time.sleep(0.05)
        os.kill(crashing.pid, signal.SIGKILL)
        crashing.wait(timeout=30)
    finally:
        crashing.kill()
    assert _lease_holder(lake) == "a retrain about to be killed"  # left behind by the crash
    # Its process is gone from this host: taken over at once, not after the TTL.
    result = retrain(lake.model_copy(update={"retrain_lease_ttl_s": 3600}), on_ray=False)
    assert len(result.candidates) == len(SLOW_GRID)
    assert _lease_holder(lake) is None


def test_the_flow_run_ends_cancelled_with_the_reason(lake: Settings) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    holder = f"test holder {uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "MLP_NAMESPACE": lake.namespace,
        "MLP_DATABASE_URL": lake.resolved_database_url,
    }
    with held_lease(lake.resolved_database_url, RETRAIN_LEASE, holder, ttl_s=60):
        ran = subprocess.run(
            [sys.executable, "-m", "flows.retrain"],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert ran.returncode == 75, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert holder in ran.stderr
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLED]))
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=20,
        )
        run = next(r for r in runs if r.state and holder in (r.state.message or ""))
        assert "another retrain is running" in run.state.message
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    decision = next(a for a in artifacts if a.key == "retrain-decision")
    assert "did not train" in decision.data and holder in decision.data


def test_the_deployment_cancels_a_run_started_while_one_is_running() -> None:
    """prefect.yaml's retrain deployment, on a Prefect server of this test's own (deploying on
    the shared one would repoint everyone's deployments at this checkout)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings
    from prefect.states import Pending, Running
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}
        for command in (
            ["work-pool", "create", "mlp-process", "--type", "process"],
            ["deploy", "--prefect-file", "prefect.yaml", "--name", "retrain/default"],
        ):
            done = subprocess.run(
                [str(PROJECT_DIR / ".venv" / "bin" / "prefect"), "--no-prompt", *command],
                cwd=PROJECT_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("retrain/default")
            first = client.create_flow_run_from_deployment(deployment.id)
            second = client.create_flow_run_from_deployment(deployment.id)
            assert client.set_flow_run_state(first.id, Pending()).state.is_pending()
            assert client.set_flow_run_state(first.id, Running()).state.is_running()
            # What a worker does when it picks up the second run: proposes Pending.
            refused = client.set_flow_run_state(second.id, Pending())
            final = client.read_flow_run(second.id).state
    assert refused.state.is_cancelled() and final.is_cancelled()
    assert final.message == "Deployment concurrency limit reached."
