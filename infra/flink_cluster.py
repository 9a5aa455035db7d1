"""A Flink session cluster (one JobManager, MLP_FLINK_TASKMANAGERS TaskManagers) from the scripts
inside the PyFlink distribution, for MLP_FLINK_MODE=session and the stream job.

Usage: python -m infra.flink_cluster up|down|status

Its configuration is generated into its own folder (FLINK_CONF_DIR,
.local/state/flink-cluster/conf), every server binds loopback only, and the REST/web UI port
comes from MLP_FLINK_REST_URL. Logs go to .local/logs/flink-cluster.
`jobmanager.sh start` / `taskmanager.sh start` put each JVM in the background and append its pid
to FLINK_PID_DIR/flink-<ident>-<daemon>.pid; `down` kills exactly those pids. The connector jars
are on the cluster's classpath because infra/setup.sh copied them into pyflink/lib.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from infra.processes import alive, listening_ports
from mlplatform.settings import Settings, get_settings

DAEMONS = ("standalonesession", "taskexecutor")
IDENT = "mlp"  # FLINK_IDENT_STRING: names the pid and log files
TASK_SLOTS = 2  # per TaskManager
TERMINAL = {"FINISHED", "CANCELED", "FAILED"}  # job states


class FlinkClusterError(RuntimeError):
    """The session cluster could not be started or stopped."""


@dataclass(frozen=True)
class ClusterDirs:
    conf: Path
    logs: Path
    pids: Path

    @classmethod
    def default(cls, s: Settings) -> ClusterDirs:
        state = s.state_dir / "flink-cluster"
        return cls(state / "conf", s.log_dir / "flink-cluster", state / "pids")


def flink_home(s: Settings) -> Path:
    """The Flink distribution inside the PyFlink wheel of the Flink environment."""
    lib = s.flink_python.parent.parent / "lib"
    homes = sorted(lib.glob("python3*/site-packages/pyflink"))
    if not homes or not (homes[0] / "bin" / "jobmanager.sh").exists():
        raise FlinkClusterError(f"no PyFlink distribution under {lib}: run `make setup`")
    return homes[0]


def cluster_config(s: Settings, rpc_port: int = 6123) -> dict[str, str]:
    """Flat config.yaml keys: loopback only, small memory, the REST port from the URL."""
    url = urlparse(s.flink_rest_url)
    return {
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": str(rpc_port),
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.memory.process.size": "1280m",
        "jobmanager.execution.failover-strategy": "region",
        # A TaskManager that died is found lost after 2 failed heartbeats (about 4 s here, not
        # the default 20 s), so its jobs restart on a new one sooner.
        "heartbeat.interval": "2000",
        "heartbeat.timeout": "20000",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.numberOfTaskSlots": str(TASK_SLOTS),
        "taskmanager.memory.process.size": "1536m",
        # The default 40% managed memory would leave ~26 MiB of task heap in a 1g process.
        "taskmanager.memory.managed.size": "128m",
        # A batch job's blocking (sort-based) shuffle takes 512 network buffers per result
        # partition by default; the preprocess job has several shuffles (replay join, duplicate
        # window, counts), more than the 2048 buffers of a 1g TaskManager hold at 512 each.
        "taskmanager.network.sort-shuffle.min-buffers": "64",
        "rest.address": url.hostname or "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": str(url.port or 8081),
        "parallelism.default": str(s.flink_parallelism),
        "python.executable": str(s.flink_python),
        "python.client.executable": str(s.flink_python),
    }


def write_conf(s: Settings, dirs: ClusterDirs, rpc_port: int = 6123) -> None:
    """The distribution's config.yaml (its JVM options are needed on Java 17) with ours on top."""
    home = flink_home(s)
    dirs.conf.mkdir(parents=True, exist_ok=True)
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties"):
        shutil.copy(home / "conf" / name, dirs.conf / name)
    java_opts = ""
    lines = (home / "conf" / "config.yaml").read_text().splitlines()
    for line in lines:  # env.java.opts.all, nested in the distribution's file
        if line.strip().startswith("all: "):
            java_opts = line.strip()[len("all: ") :]
    options = {"env.java.opts.all": java_opts, **cluster_config(s, rpc_port)}
    (dirs.conf / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in options.items()))


def _env(dirs: ClusterDirs) -> dict[str, str]:
    return {
        **os.environ,
        "FLINK_CONF_DIR": str(dirs.conf),
        "FLINK_LOG_DIR": str(dirs.logs),
        "FLINK_PID_DIR": str(dirs.pids),
        "FLINK_IDENT_STRING": IDENT,
    }


def daemon_pids(dirs: ClusterDirs, daemon: str) -> list[int]:
    """The live JVMs the scripts recorded for `daemon` (one of DAEMONS)."""
    path = dirs.pids / f"flink-{IDENT}-{daemon}.pid"
    if not path.exists():
        return []
    return [int(pid) for pid in path.read_text().split() if pid.isdigit() and alive(int(pid))]


def cluster_pids(dirs: ClusterDirs) -> list[int]:
    """The JVMs the scripts recorded that are still alive."""
    return [pid for daemon in DAEMONS for pid in daemon_pids(dirs, daemon)]


def job_taskmanager(s: Settings, dirs: ClusterDirs, job_id: str) -> int:
    """The pid of the TaskManager that runs a job (parallelism 1: one TaskManager), found by its
    RPC port (the JobManager names TaskManagers `<host>:<rpc port>-<suffix>`)."""
    job = httpx.get(f"{s.flink_rest_url}/jobs/{job_id}", timeout=10).json()
    vertex = job["vertices"][0]["id"]
    where = httpx.get(
        f"{s.flink_rest_url}/jobs/{job_id}/vertices/{vertex}/taskmanagers", timeout=10
    )
    ports = {
        int(tm["taskmanager-id"].rpartition("-")[0].rpartition(":")[2])
        for tm in where.json()["taskmanagers"]
    }
    found = [pid for pid in daemon_pids(dirs, "taskexecutor") if listening_ports(pid) & ports]
    if len(found) != 1:
        raise FlinkClusterError(f"job {job_id}: TaskManager pids {found} for RPC ports {ports}")
    return found[0]


def healthy(s: Settings, slots: int = 1) -> bool:
    """The REST API answers and at least `slots` task slots are registered."""
    try:
        response = httpx.get(f"{s.flink_rest_url}/overview", timeout=3.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json().get("slots-total", 0) >= slots


def _start(s: Settings, dirs: ClusterDirs, script: str) -> None:
    completed = subprocess.run(
        ["bash", str(flink_home(s) / "bin" / script), "start"],
        env=_env(dirs),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    if completed.returncode != 0:
        stop_cluster(s, dirs)
        raise FlinkClusterError(f"{script} start failed: {completed.stdout}{completed.stderr}")


def _get(s: Settings, path: str) -> httpx.Response:
    return httpx.get(f"{s.flink_rest_url}{path}", timeout=3)


def job_recovered(s: Settings, job: dict, within_s: float) -> bool:
    """Whether a job (an entry of /jobs/overview) has ended, waits out a restart back-off (the
    stream lake job's, 15 s: it is not waited for), or runs all its tasks and, when it
    checkpoints within `within_s`, has completed a checkpoint since it last started running (a
    restarted job has then replayed up to that checkpoint's barrier: caught up, not just
    deployed)."""
    if job["state"] in TERMINAL or job["state"] == "RESTARTING":
        return True
    tasks = job["tasks"]
    if tasks["running"] + tasks["finished"] != tasks["total"]:
        return False
    config = _get(s, f"/jobs/{job['jid']}/checkpoints/config")
    if config.status_code != 200 or config.json()["interval"] > within_s * 1000:
        return True  # no checkpoints (a batch job), or none due in time
    started = _get(s, f"/jobs/{job['jid']}").json()["timestamps"]["RUNNING"]
    completed = _get(s, f"/jobs/{job['jid']}/checkpoints").json()["latest"]["completed"]
    return completed is not None and completed["trigger_timestamp"] > started


def await_jobs_recovered(s: Settings, taskmanagers: int, timeout_s: float) -> bool:
    """Wait until the JobManager has dropped the TaskManagers that died (it lists no more than
    `taskmanagers`) and every job has recovered (job_recovered); False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            listed = _get(s, "/taskmanagers").json()["taskmanagers"]
            jobs = _get(s, "/jobs/overview").json()["jobs"]
            recovered = all(job_recovered(s, job, timeout_s) for job in jobs)
            if len(listed) <= taskmanagers and recovered:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def start_cluster(
    s: Settings,
    dirs: ClusterDirs | None = None,
    rpc_port: int = 6123,
    timeout_s: float = 120,
    recovery_wait_s: float = 60,
) -> str:
    """Start the JobManager and `flink_taskmanagers` TaskManagers unless the cluster already
    answers. When only TaskManagers are gone (killed, crashed), start new ones: the JobManager
    and its jobs stay. A job whose TaskManager died restarts from its last checkpoint on one
    that is up (the second TaskManager stands by for that), else on the new one. With a
    standby up, the new JVMs start once its jobs have recovered (at most `recovery_wait_s`
    later): on shared cores a starting JVM slows the takeover (task initialization, replay)
    that brings predictions back, while the spare it restores is needed only at the next
    failure."""
    dirs = dirs or ClusterDirs.default(s)
    # By the pid files first: the JobManager reports a dead TaskManager's slots for a while.
    alive_tms = len(daemon_pids(dirs, "taskexecutor"))
    missing = s.flink_taskmanagers - alive_tms
    if daemon_pids(dirs, "standalonesession") and missing > 0:
        if alive_tms:  # a standby took the jobs over: they recover before a new JVM competes
            await_jobs_recovered(s, alive_tms, recovery_wait_s)
        for _ in range(missing):
            _start(s, dirs, "taskmanager.sh")
        started = f"{missing} new TaskManager(s) started"
    elif healthy(s):
        return "flink-cluster: already running"
    else:
        if cluster_pids(dirs):
            stop_cluster(s, dirs)
        write_conf(s, dirs, rpc_port)
        dirs.logs.mkdir(parents=True, exist_ok=True)
        _start(s, dirs, "jobmanager.sh")
        for _ in range(s.flink_taskmanagers):
            _start(s, dirs, "taskmanager.sh")
        started = "started"
    deadline = time.monotonic() + timeout_s
    slots = s.flink_taskmanagers * TASK_SLOTS
    while time.monotonic() < deadline:
        if healthy(s, slots):
            return f"flink-cluster: {started}, web UI {s.flink_rest_url}"
        if len(cluster_pids(dirs)) < 1 + s.flink_taskmanagers:
            break
        time.sleep(1.0)
    stop_cluster(s, dirs)
    raise FlinkClusterError(f"the Flink session cluster did not become healthy; see {dirs.logs}")


def stop_cluster(s: Settings, dirs: ClusterDirs | None = None, grace_s: float = 15) -> str:
    """SIGTERM to the recorded JVMs, SIGKILL after `grace_s`; the pid files are removed."""
    dirs = dirs or ClusterDirs.default(s)
    pids = cluster_pids(dirs)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and cluster_pids(dirs):
        time.sleep(0.5)
    for pid in cluster_pids(dirs):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    if cluster_pids(dirs):
        raise FlinkClusterError(f"Flink JVMs {cluster_pids(dirs)} survived SIGKILL")
    for daemon in DAEMONS:
        (dirs.pids / f"flink-{IDENT}-{daemon}.pid").unlink(missing_ok=True)
    return "flink-cluster: stopped" if pids else "flink-cluster: not running"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"up", "down", "status"}:
        print(__doc__, file=sys.stderr)
        return 2
    s = get_settings()
    try:
        if argv[0] == "up":
            print(start_cluster(s))
        elif argv[0] == "down":
            print(stop_cluster(s))
        else:
            up = healthy(s)
            print(f"flink-cluster   {'healthy' if up else 'down':8} {s.flink_rest_url}")
            return 0 if up else 1
    except FlinkClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
