"""Shared fixtures: the real services from infra/, and settings isolated per test session.

Services are started once per session (a running one is reused). A service that cannot start
fails the tests that need it: nothing is skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.flink_cluster import (
    ClusterDirs,
    FlinkClusterError,
    cluster_pids,
    start_cluster,
    stop_cluster,
)
from infra.processes import running
from mlplatform.settings import PROJECT_DIR, Settings, get_settings
from tests.helpers import module_settings

os.environ.setdefault("PREFECT_API_URL", get_settings().prefect_api_url)
# The tests' Flink jobs are small: without the optimizing JIT a local job's JVM spends about 7 s
# (of ~30) less compiling on 2 cores. The variable reaches the JVM that PyFlink starts.
os.environ.setdefault("JVM_ARGS", "-XX:TieredStopAtLevel=1")


@pytest.fixture(scope="session")
def services() -> Iterator[Settings]:
    """Pulsar, Prefect server and worker, and Ray, healthy on loopback."""
    from infra.services import SERVICES, ServiceError, start, stop

    settings = get_settings()
    started = []
    for service in SERVICES.values():
        try:
            if start(service, settings).endswith("started"):
                started.append(service)
        except ServiceError as error:
            pytest.fail(f"service did not start: {error}")
    yield settings
    import ray

    # Disconnect this driver first: a driver whose raylet is stopped exits the process.
    ray.shutdown()
    if os.environ.get("CI") == "true":  # leave a developer's running services alone
        for service in reversed(started):
            stop(service, settings)


@pytest.fixture(scope="session")
def isolated(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose tables, topics, landing folder and database belong to this session only.
    Warm model pools go idle after 20 s (a test's pool must not outlive its test for long on a
    shared two-CPU cluster); the session's pools and batch Serve applications are removed at
    its end."""
    tag = uuid.uuid4().hex[:8]
    root: Path = tmp_path_factory.mktemp("platform")
    yield Settings(
        namespace=f"it_{tag}",
        features_topic=f"persistent://public/default/features-it-{tag}",
        predictions_topic=f"persistent://public/default/predictions-it-{tag}",
        dead_letter_topic=f"persistent://public/default/features-dlq-it-{tag}",
        quarantine_topic=f"persistent://public/default/raw-quarantine-it-{tag}",
        stream_subscription=f"stream-it-{tag}",
        landing_dir=root / "landing",
        database_url=f"sqlite:///{root / 'platform.db'}",
        commit_every_rows=100,
        pool_idle_s=20,
    )
    _remove_warm_pools(f"it_{tag}")


def _remove_warm_pools(namespace: str) -> None:
    """The session's pool actors and batch Serve applications (their apps are named after the
    test modules' serve_app_name, 'model-it-...')."""
    import ray

    from mlplatform.inference.batch.model_pool import release_pools

    if not ray.is_initialized():
        return
    release_pools(f"mlp-pool/{namespace}")
    from ray import serve

    try:
        applications = serve.status().applications
    except Exception:  # Serve never started in this session
        return
    for name in applications:
        if name.startswith("model-it-") and "-batch-" in name:
            serve.delete(name, _blocking=False)


@pytest.fixture(scope="session")
def deployments(services: Settings) -> None:
    """Every deployment in prefect.yaml, registered on the running Prefect server."""
    completed = subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PREFECT_API_URL": services.prefect_api_url},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jvms_with(marker: str) -> list[int]:
    """Live JVMs whose command line mentions `marker` (the cluster's own log folder)."""
    return [p.pid for p in running() if marker in p.command_line and "java" in p.command_line]


@pytest.fixture(scope="module")
def flink_session(
    isolated: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, ClusterDirs]]:
    """A Flink session cluster of the module's own (free ports, its own folders), stopped after
    it: settings that point at it, and its folders."""
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
            status = (Path("/proc") / str(pid) / "status").read_text()
            rss = status.split("VmRSS:")[1].split()[0] if "VmRSS:" in status else "?"
            print(f"flink JVM {pid}: RSS {rss} KiB")
        stop_cluster(s, dirs)
        assert cluster_pids(dirs) == []
        assert _jvms_with(str(dirs.logs)) == [], "a Flink JVM of the test cluster survived"
