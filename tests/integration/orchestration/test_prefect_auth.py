"""Prefect API basic auth (MLP_PREFECT_API_AUTH_STRING) on a second Prefect server of our own.

The module starts the server through the same infra/services.py code as `make up`, on a free
loopback port with PREFECT_HOME and logs under a temporary folder, and always stops it. The
platform's server is not used. A server that does not start fails the tests; nothing is skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from infra.services import VENV_BIN, _prefect_env, prefect_auth_headers
from mlplatform.settings import Settings
from tests.helpers import extra_service

pytestmark = pytest.mark.integration

AUTH = "mlp-admin:s3cret-Auth-9f2c"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    root: Path = tmp_path_factory.mktemp("prefect-auth")
    s = Settings(
        local_dir=root,
        prefect_api_url=f"http://127.0.0.1:{_free_port()}/api",
        prefect_api_auth_string=SecretStr(AUTH),
    )
    with extra_service("prefect-server", s, "the second Prefect server"):
        yield s


def _post(s: Settings, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{s.prefect_api_url}/flows/filter", json={}, headers=headers, timeout=10.0)


def test_api_refuses_requests_without_the_auth_string(server: Settings) -> None:
    assert _post(server, {}).status_code == 401
    assert _post(server, {"Authorization": "Basic bm90OnRoaXM="}).status_code == 401  # not:this
    # Health stays open for probes (Kubernetes, infra's own health check).
    assert httpx.get(f"{server.prefect_api_url}/health", timeout=10.0).status_code == 200


def test_api_accepts_basic_auth_with_the_auth_string(server: Settings) -> None:
    headers = prefect_auth_headers(server)
    assert headers["Authorization"].startswith("Basic ")
    response = _post(server, headers)
    assert response.status_code == 200, response.text
    assert response.json() == []


def test_prefect_clients_send_the_auth_string_from_infra_env(server: Settings) -> None:
    """The worker and flow runs get PREFECT_API_AUTH_STRING from the same env as the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    completed = subprocess.run(
        [str(VENV_BIN / "prefect"), "work-pool", "ls"],
        env={**env, **_prefect_env(server)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_auth_string_never_in_the_server_log(server: Settings) -> None:
    log = server.log_dir / "prefect-server.log"
    assert log.exists()
    text = log.read_text(errors="replace")
    assert AUTH not in text
    assert "s3cret" not in text
    assert "s3cret" not in repr(server)
