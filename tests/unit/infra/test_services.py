"""infra.pulsar_config and infra.services without starting any service."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.pulsar_config import standalone_overrides, write_standalone_conf
from infra.services import SERVICES, Service, ServiceError, port_open, start
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit

TEMPLATE = """\
# Pulsar standalone template
clusterName=standalone
bindAddress=0.0.0.0
# brokerServicePort=6650
webServicePort = 8080
advertisedAddress=
managedLedgerDefaultEnsembleSize=2
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, local_dir=tmp_path, pulsar_service_url="pulsar://127.0.0.1:16650"
    )


def _write_conf(s: Settings) -> dict[str, list[str]]:
    conf = s.pulsar_home / "conf"
    conf.mkdir(parents=True)
    (conf / "standalone.conf").write_text(TEMPLATE)
    write_standalone_conf(s)
    lines = (s.state_dir / "pulsar" / "standalone.conf").read_text().splitlines()
    values: dict[str, list[str]] = {}
    for line in lines:
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return {"lines": lines, **values}


def test_overrides_replace_existing_keys(settings: Settings) -> None:
    conf = _write_conf(settings)
    assert conf["bindAddress"] == ["127.0.0.1"]
    assert conf["advertisedAddress"] == ["127.0.0.1"]
    assert conf["webServicePort"] == ["8080"]
    assert conf["managedLedgerDefaultEnsembleSize"] == ["1"]
    assert "bindAddress=0.0.0.0" not in conf["lines"]


def test_unrelated_lines_and_comments_kept(settings: Settings) -> None:
    conf = _write_conf(settings)
    assert conf["clusterName"] == ["standalone"]
    assert "# Pulsar standalone template" in conf["lines"]
    assert "# brokerServicePort=6650" in conf["lines"]
    # Replaced keys stay where the template had them.
    assert conf["lines"].index("bindAddress=127.0.0.1") == 2


def test_missing_keys_appended_once(settings: Settings) -> None:
    conf = _write_conf(settings)
    overrides = standalone_overrides(settings)
    for key, value in overrides.items():
        assert conf[key] == [value], key
    assert conf["brokerServicePort"] == ["16650"]
    assert conf["lines"][-1] == "dbStorage_rocksDB_blockCacheSize=16777216"
    # Four overridden keys are set in the template; the commented one counts as missing.
    in_template = 4
    assert len(conf["lines"]) == len(TEMPLATE.splitlines()) + len(overrides) - in_template


def test_loopback_only(settings: Settings) -> None:
    overrides = standalone_overrides(settings)
    assert overrides["bindAddress"] == "127.0.0.1"
    assert overrides["advertisedAddress"] == "127.0.0.1"
    assert overrides["listeningInterface"] == "lo"
    assert overrides["brokerServicePort"] == "16650"
    assert overrides["webServicePort"] == str(settings.pulsar_web_port)


def test_missing_template_raises(settings: Settings) -> None:
    with pytest.raises(FileNotFoundError):
        write_standalone_conf(settings)


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: nobody else can take the port, and connecting is refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_port_open(listening_port: int, closed_port: int) -> None:
    assert port_open(listening_port) is True
    assert port_open(closed_port) is False


def _service(port: int, healthy: bool, calls: list[str]) -> Service:
    def command(s: Settings) -> list[str]:
        calls.append("command")
        raise AssertionError("must not start a process")

    def before_start(s: Settings) -> None:
        calls.append("before_start")

    return Service(
        name="fake",
        port=lambda s: port,
        command=command,
        healthy=lambda s: healthy,
        env=lambda s: {},
        before_start=before_start,
        start_timeout_s=1.0,
    )


def test_start_refuses_port_held_by_foreign_process(
    settings: Settings, listening_port: int
) -> None:
    calls: list[str] = []
    with pytest.raises(ServiceError) as raised:
        start(_service(listening_port, healthy=False, calls=calls), settings)
    message = str(raised.value)
    assert message.startswith("fake:")
    assert f"port {listening_port} on 127.0.0.1 is in use" in message
    assert "did not start" in message
    assert calls == []
    assert not settings.state_dir.exists()


def test_start_does_nothing_when_healthy(settings: Settings, listening_port: int) -> None:
    calls: list[str] = []
    assert start(_service(listening_port, healthy=True, calls=calls), settings) == (
        "fake: already running"
    )
    assert calls == []


def test_the_ray_cluster_gets_serves_switches_only_for_haproxy_ingress(settings: Settings) -> None:
    ray = SERVICES["ray"]
    proxy = ray.env(settings.model_copy(update={"serve_ingress": "proxy"}))
    assert (
        "RAY_SERVE_ENABLE_HA_PROXY" not in proxy and "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in proxy
    )
    haproxy = ray.env(settings)  # the default
    assert haproxy["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
