"""Preprocess with MLP_FLINK_MODE=session: the job is submitted to a Flink session cluster.

The module starts a session cluster of its own from the PyFlink distribution's scripts
(infra/flink_cluster.py, as `python -m infra.flink_cluster up` does) on free loopback ports, with
its configuration, logs and pid files in a temporary folder, and always stops it, checking that no
JVM of it remains. A cluster that does not start fails the tests; nothing is skipped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.flink_cluster import (
    ClusterDirs,
    FlinkClusterError,
    cluster_pids,
    start_cluster,
    stop_cluster,
)
from mlplatform import preprocess as preprocess_module
from mlplatform.dataset import write_demo_raw
from mlplatform.iceberg_tables import count_rows, ensure_tables
from mlplatform.preprocess import FlinkJobError, preprocess
from mlplatform.pulsar_io import read_all
from mlplatform.raw_files import Plan
from mlplatform.settings import Settings
from tasks.artifacts import preprocess_markdown
from tests.conftest import module_settings

pytestmark = pytest.mark.integration

VALID, MALFORMED = 100, 7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jvms_with(marker: str) -> list[int]:
    """Live processes whose command line mentions `marker` (the cluster's own log folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "java" in cmdline:
            found.append(int(entry.name))
    return found


def _jobs(s: Settings) -> dict[str, str]:
    response = httpx.get(f"{s.flink_rest_url}/jobs/overview", timeout=10)
    response.raise_for_status()
    return {job["jid"]: job["state"] for job in response.json()["jobs"]}


@pytest.fixture(scope="module")
def session(
    isolated: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, ClusterDirs]]:
    root = tmp_path_factory.mktemp("flink-cluster")
    dirs = ClusterDirs(root / "conf", root / "logs", root / "pids")
    s = module_settings(
        isolated,
        "flinksession",
        flink_mode="session",
        flink_rest_url=f"http://127.0.0.1:{_free_port()}",
    )
    try:
        started = time.monotonic()
        try:
            start_cluster(s, dirs, rpc_port=_free_port())
        except FlinkClusterError as error:
            pytest.fail(f"the Flink session cluster did not start: {error}")
        print(f"session cluster up in {time.monotonic() - started:.1f}s")
        yield s, dirs
    finally:
        for pid in cluster_pids(dirs):
            rss = (Path("/proc") / str(pid) / "status").read_text().split("VmRSS:")[1].split()[0]
            print(f"flink JVM {pid}: RSS {int(rss) // 1024} MiB")
        stop_cluster(s, dirs)
        assert cluster_pids(dirs) == []
        assert _jvms_with(str(dirs.logs)) == [], "a Flink JVM of the test cluster survived"


def test_preprocess_runs_on_the_session_cluster(session: tuple[Settings, ClusterDirs]) -> None:
    s, _ = session
    write_demo_raw(s, VALID, MALFORMED, seed=17)
    result = preprocess(s, run_id="flink-session-it")
    assert (result.files, result.features_rows, result.quarantined_rows) == (1, VALID, MALFORMED)
    assert result.job_id and _jobs(s)[result.job_id] == "FINISHED"
    assert result.flink_job_url == f"{s.flink_rest_url}/#/job/{result.job_id}"
    link = f"[{result.flink_job_url}]({result.flink_job_url})"
    assert f"| Flink UI | {link} |" in preprocess_markdown(result)  # the run's artifact
    assert sum(result.quarantined_by_reason.values()) == MALFORMED
    catalog = ensure_tables(s)
    assert count_rows(catalog.load_table(s.table_id(s.features_table))) == VALID
    quarantine = catalog.load_table(s.table_id(s.quarantine_table)).scan().to_arrow()
    assert quarantine.num_rows == MALFORMED
    assert all(quarantine.column("reason").to_pylist())
    messages = read_all(s, s.features_topic)
    assert len(messages) == VALID
    assert len({m.partition_key() for m in messages}) == VALID


def test_a_failing_job_fails_preprocess_with_flinks_error(
    session: tuple[Settings, ClusterDirs], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that fails in the cluster (its source folder is gone) fails preprocess, and the
    error carries Flink's root cause from the cluster's REST API."""
    s, _ = session
    missing = s.resolved_landing_dir / "gone"
    monkeypatch.setattr(preprocess_module, "claim_landing_files", lambda s, run_id: missing)
    source = {"format": "csv", "path": f"file://{missing}", "columns": s.dataset_spec.columns}
    plan = Plan(sources=[source], files=1, added={}, added_by={}, rejected={})
    monkeypatch.setattr(preprocess_module, "plan_sources", lambda *args: plan)
    before = _jobs(s)
    with pytest.raises(FlinkJobError) as raised:
        preprocess(s, run_id="flink-session-fail")
    message = str(raised.value)
    assert "root cause in the cluster" in message, message
    assert f"FileNotFoundException: File file:{missing} does not exist" in message, message
    failed = {jid: state for jid, state in _jobs(s).items() if jid not in before}
    assert list(failed.values()) == ["FAILED"], failed
    assert f"/#/job/{next(iter(failed))}" in message
