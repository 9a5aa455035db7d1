"""Where the stream job resumes: the last stop's savepoint, else the newest retained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.preprocess import stream
from mlplatform.preprocess.batch import FlinkJobError
from mlplatform.preprocess.stream import (
    checkpoint_dir,
    job_name,
    latest_checkpoint,
    resume_point,
    stream_settings,
)
from mlplatform.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, local_dir=tmp_path, namespace="ns1")


def _checkpoint(s: Settings, job_id: str, n: int, complete: bool = True) -> Path:
    folder = checkpoint_dir(s) / job_id / f"chk-{n}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "_metadata").write_bytes(b"x")
    return folder


def test_the_newest_complete_checkpoint_wins(settings: Settings) -> None:
    assert latest_checkpoint(settings, "j1") is None
    _checkpoint(settings, "j1", 9)
    newest = _checkpoint(settings, "j1", 10)
    _checkpoint(settings, "j1", 11, complete=False)  # in progress when the job died
    _checkpoint(settings, "j2", 12)  # another job's
    assert latest_checkpoint(settings, "j1") == str(newest)


def test_a_stop_resumes_from_its_savepoint(settings: Settings) -> None:
    _checkpoint(settings, "j1", 3)
    record = {"job_id": "j1", "stopped_job_id": "j1", "savepoint": "file:/sp/savepoint-1"}
    assert resume_point(settings, record) == "file:/sp/savepoint-1"


def test_a_job_that_ended_without_a_savepoint_resumes_from_its_checkpoint(
    settings: Settings,
) -> None:
    newest = _checkpoint(settings, "j2", 7)
    # j1 was stopped with a savepoint; j2 resumed from it and was then cancelled.
    record = {
        "job_id": "j2",
        "resumed_from": "file:/sp/savepoint-1",
        "stopped_job_id": "j1",
        "savepoint": "file:/sp/savepoint-1",
    }
    assert resume_point(settings, record) == str(newest)
    # Cancelled before its first checkpoint: where it started from.
    assert resume_point(settings, {**record, "job_id": "j3"}) == "file:/sp/savepoint-1"


def test_the_first_start_reads_the_topic_from_its_start(settings: Settings) -> None:
    assert resume_point(settings, {}) is None


def test_stream_mode_runs_on_the_session_cluster_with_a_job_per_namespace(
    settings: Settings,
) -> None:
    assert stream_settings(settings).flink_mode == "session"
    assert job_name(settings) == "preprocess-stream-ns1"


def test_a_stop_during_a_restart_asks_again_until_the_job_runs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flink refuses a savepoint while a job restarts (a TaskManager lost): the stop asks
    again; any other failure is raised at once."""
    refused = {"failure-cause": {"stack-trace": f"CheckpointException: ... {stream.NOT_RUNNING}"}}
    answers = [refused, refused, {"location": "file:///sp/1"}]
    triggers: list[str] = []

    def rest(s: Settings, method: str, path: str, **_: object) -> dict:
        if method == "POST":
            triggers.append(path)
            return {"request-id": f"t{len(triggers)}"}
        return {"status": {"id": "COMPLETED"}, "operation": answers[len(triggers) - 1]}

    monkeypatch.setattr(stream, "_rest", rest)
    monkeypatch.setattr(stream.time, "sleep", lambda _: None)
    assert stream._stop_job(settings, stream.LAKE, "j1", timeout_s=60) == "file:///sp/1"
    assert triggers == ["/jobs/j1/stop"] * 3
    assert stream.read_record(settings, stream.LAKE)["savepoint"] == "file:///sp/1"
    answers[:] = [{"failure-cause": {"stack-trace": "IOException: disk full"}}]
    triggers.clear()
    with pytest.raises(FlinkJobError, match="disk full"):
        stream._stop_job(settings, stream.LAKE, "j1", timeout_s=60)
