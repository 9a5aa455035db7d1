"""When the repair starts a new TaskManager: infra.flink_cluster.job_recovered against canned
answers of the JobManager's REST API (the real cluster: tests/integration/preprocess)."""

from __future__ import annotations

import httpx
import pytest

from infra import flink_cluster
from infra.flink_cluster import job_recovered
from mlplatform.settings import Settings


def _job(running: int, total: int = 2, state: str = "RUNNING") -> dict:
    return {
        "jid": "j1",
        "state": state,
        "tasks": {"running": running, "finished": 0, "total": total},
    }


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, httpx.Response]:
    canned: dict[str, httpx.Response] = {}
    monkeypatch.setattr(flink_cluster, "_get", lambda s, path: canned[path])
    return canned


def _checkpoints(answers: dict, interval_ms: int, started: int, completed: int | None) -> None:
    answers["/jobs/j1/checkpoints/config"] = httpx.Response(200, json={"interval": interval_ms})
    answers["/jobs/j1"] = httpx.Response(200, json={"timestamps": {"RUNNING": started}})
    latest = None if completed is None else {"trigger_timestamp": completed}
    answers["/jobs/j1/checkpoints"] = httpx.Response(200, json={"latest": {"completed": latest}})


def test_a_job_still_deploying_has_not_recovered(answers: dict) -> None:
    assert not job_recovered(Settings(), _job(running=1), within_s=60)


def test_a_restarted_job_recovers_with_its_first_checkpoint_after_the_restart(
    answers: dict,
) -> None:
    _checkpoints(answers, interval_ms=2000, started=1000, completed=900)  # from before the kill
    assert not job_recovered(Settings(), _job(running=2), within_s=60)
    _checkpoints(answers, interval_ms=2000, started=1000, completed=3000)
    assert job_recovered(Settings(), _job(running=2), within_s=60)


def test_no_checkpoint_is_awaited_when_none_is_due_in_time_or_none_is_taken(answers: dict) -> None:
    _checkpoints(answers, interval_ms=86_400_000, started=1000, completed=None)
    assert job_recovered(Settings(), _job(running=2), within_s=60)
    answers["/jobs/j1/checkpoints/config"] = httpx.Response(404, json={})  # a batch job
    assert job_recovered(Settings(), _job(running=2), within_s=60)


def test_an_ended_job_or_one_in_its_restart_back_off_is_not_waited_for(answers: dict) -> None:
    assert job_recovered(Settings(), _job(running=0, state="CANCELED"), within_s=60)
    assert job_recovered(Settings(), _job(running=0, state="RESTARTING"), within_s=60)
