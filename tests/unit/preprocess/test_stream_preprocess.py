"""Where the stream job resumes: the last stop's savepoint, else the newest retained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

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
