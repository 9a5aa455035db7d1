"""infra/deploy: every file parses, kinds and versions fit, compose binds loopback only, and the
manifests name only MLP_* settings that exist, so they cannot drift from the code silently."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.pulsar_config import TOKEN_CLIENT_PLUGIN, TOKEN_PROVIDER, standalone_overrides
from mlplatform.settings import PROJECT_DIR, Settings

pytestmark = pytest.mark.unit

DEPLOY = PROJECT_DIR / "infra" / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("ray.io/v1", "RayCluster"),
    ("flink.apache.org/v1beta1", "FlinkDeployment"),
}
# Broker settings the embedded broker gets from infra/pulsar_config.py, that every deployment keeps.
BROKER_KEYS = (
    "brokerDeduplicationEnabled",
    "brokerDeleteInactiveTopicsEnabled",
    "transactionCoordinatorEnabled",
    "brokerClient_operationTimeoutMs",
)


def _embedded_broker() -> dict[str, str]:
    return standalone_overrides(Settings())


YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))


def _docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _objects(name: str) -> list[dict[str, Any]]:
    return [doc for doc in _docs(DEPLOY / name) if isinstance(doc, dict) and "kind" in doc]


def _pom() -> tuple[dict[str, str], list[str]]:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(PROJECT_DIR / "infra" / "jvm" / "pom.xml").getroot()
    props = {el.tag.split("}")[1]: el.text or "" for el in root.find("m:properties", ns)}

    def resolve(text: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: props[m.group(1)], text)

    coordinates = [
        ":".join(
            resolve(dep.find(f"m:{part}", ns).text or "")
            for part in ("groupId", "artifactId", "version")
        )
        for dep in root.findall("m:dependencies/m:dependency", ns)
    ]
    return props, coordinates


def test_the_manifests_exist() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
    assert {
        "compose.yaml",
        "kuberay/raycluster.yaml",
        "flink/flinkdeployment.yaml",
        "pulsar/values.yaml",
        "prefect/server-values.yaml",
        "prefect/worker-values.yaml",
        "platform/settings.yaml",
    } <= names
    assert (DEPLOY / "README.md").read_text().startswith("# Production manifests\n\n**UNTESTED")


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses_and_kinds_are_known(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if "kind" in doc:
            assert (doc.get("apiVersion"), doc["kind"]) in KINDS, path
            assert doc["metadata"]["name"], path


def test_raycluster_matches_the_locked_ray() -> None:
    (cluster,) = _objects("kuberay/raycluster.yaml")
    assert cluster["kind"] == "RayCluster"
    assert cluster["spec"]["rayVersion"] == version("ray")
    pods = [cluster["spec"]["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["spec"]["workerGroupSpecs"]
    ]
    assert len(pods) >= 2  # head + a worker group
    py = "".join(map(str, sys.version_info[:2]))
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert container["image"] == f"rayproject/ray:{version('ray')}-py{py}"
            assert {"configMapRef": {"name": "mlp-settings"}} in container["envFrom"]


def test_flink_session_cluster_lists_the_pom_connectors() -> None:
    (deployment,) = _objects("flink/flinkdeployment.yaml")
    assert deployment["spec"]["flinkVersion"] == "v1_20"
    assert "job" not in deployment["spec"]  # a session cluster
    text = (DEPLOY / "flink" / "flinkdeployment.yaml").read_text()
    _, coordinates = _pom()
    assert coordinates
    for coordinate in coordinates:
        assert coordinate in text, f"{coordinate} (infra/jvm/pom.xml) is not listed"
        assert coordinate in (DEPLOY / "README.md").read_text()


def _compose() -> dict[str, Any]:
    (doc,) = _docs(COMPOSE)
    return doc


def test_compose_publishes_every_port_on_loopback_only() -> None:
    services = _compose()["services"]
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
    assert published >= 6


def test_compose_uses_the_pinned_images_and_broker_settings() -> None:
    services = _compose()["services"]
    props, _ = _pom()
    images = {s["image"] for s in services.values()}
    assert images == {
        f"apachepulsar/pulsar:{props['pulsar.version']}",
        f"prefecthq/prefect:{version('prefect')}-python3.11",
        f"rayproject/ray:{version('ray')}-py311",
        "postgres:16",
    }
    broker = services["pulsar"]["environment"]
    for key in BROKER_KEYS:
        assert broker[f"PULSAR_PREFIX_{key}"] == _embedded_broker()[key], key
    assert broker["PULSAR_PREFIX_authenticationProviders"] == TOKEN_PROVIDER
    assert broker["PULSAR_PREFIX_brokerClientAuthenticationPlugin"] == TOKEN_CLIENT_PLUGIN
    assert broker["PULSAR_PREFIX_superUserRoles"] == Settings().pulsar_auth_admin_role
    # The Prefect server checks the same string its clients send.
    server = services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    worker = services["prefect-worker"]["environment"]
    assert server == worker["PREFECT_API_AUTH_STRING"] == worker["MLP_PREFECT_API_AUTH_STRING"]


def test_pulsar_and_prefect_chart_values() -> None:
    (pulsar,) = _docs(DEPLOY / "pulsar" / "values.yaml")
    props, _ = _pom()
    assert pulsar["defaultPulsarImageTag"] == props["pulsar.version"]
    assert pulsar["auth"]["authentication"] == {
        "enabled": True,
        "provider": "jwt",
        "jwt": {"usingSecretKey": True},
    }
    assert pulsar["auth"]["authorization"]["enabled"] is True
    for key in BROKER_KEYS:
        assert pulsar["broker"]["configData"][key] == _embedded_broker()[key], key
    (server,) = _docs(DEPLOY / "prefect" / "server-values.yaml")
    (worker,) = _docs(DEPLOY / "prefect" / "worker-values.yaml")
    assert server["global"]["prefect"]["image"]["prefectTag"].startswith(version("prefect"))
    assert worker["worker"]["image"]["prefectTag"].startswith(version("prefect"))
    assert server["server"]["basicAuth"]["enabled"] is True
    assert worker["worker"]["selfHostedServerApiConfig"]["basicAuth"]["enabled"] is True


def test_every_mlp_variable_is_a_setting() -> None:
    named: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            for name in re.findall(r"\bMLP_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
                named.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    assert len(named) >= 10
    fields = set(Settings.model_fields)
    unknown = {name: files for name, files in named.items() if name[4:].lower() not in fields}
    assert not unknown, f"not a field of mlplatform/settings/: {unknown}"
