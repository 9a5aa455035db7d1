"""Token (JWT) authentication and namespace authorization on a broker of the module's own.

The module starts a second standalone broker with MLP_PULSAR_AUTH on free loopback ports, with
state (its secret key and tokens included) under a temporary folder, through the same
infra/services.py code as `make up`, and always stops it. The platform's broker is not used.
A broker that does not start fails the tests; nothing is skipped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pulsar
import pytest
from pydantic import SecretStr

from infra.pulsar_config import secret_key_file
from infra.services import pulsar_admin_token_headers
from mlplatform.connectors.pulsar_io import (
    ensure_partitioned_topic,
    ensure_subscription,
    make_client,
    read_all,
    receive_batch,
    topic_partitions,
)
from mlplatform.inference.serving.deployment import start_serving, stop_serving
from mlplatform.inference.stream.function_spec import FunctionSpec
from mlplatform.inference.stream.pulsar_functions import (
    champion_user_config,
    run_function,
)
from mlplatform.inference.stream.runner import run_stream_inference
from mlplatform.preprocess.batch import preprocess
from mlplatform.registry import model_registry
from mlplatform.sample_data.demo_rows import write_demo_raw
from mlplatform.sample_data.synthetic_features import feature_rows, publish_features
from mlplatform.settings import PROJECT_DIR, Settings, get_settings
from tests.helpers import extra_service
from tests.integration.small_champion import register_small_champion

pytestmark = pytest.mark.integration

REFUSED_TIMEOUT_S = 5  # an unauthenticated connection is closed; the client retries until this


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jwt(subject: str, key: bytes) -> str:
    """An HS256 token, as `pulsar tokens create` makes it."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signed = b64(b'{"alg":"HS256"}') + b"." + b64(json.dumps({"sub": subject}).encode())
    return (signed + b"." + b64(hmac.new(key, signed, hashlib.sha256).digest())).decode()


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A standalone broker with token authentication, and settings of its client role."""
    root: Path = tmp_path_factory.mktemp("pulsar-auth")
    (root / "pulsar").symlink_to(get_settings().pulsar_home)  # the installed distribution
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        _env_file=None,
        local_dir=root,
        pulsar_service_url=f"pulsar://127.0.0.1:{_free_port()}",
        pulsar_admin_url=f"http://127.0.0.1:{_free_port()}",
        pulsar_auth=True,
        features_topic=f"persistent://public/default/features-auth-{tag}",
        stream_subscription=f"stream-auth-{tag}",
        namespace=f"auth_{tag}",
        catalog_url=f"sqlite:///{root / 'catalog.db'}",
        warehouse=f"file://{root / 'warehouse'}",
        database_url=f"sqlite:///{root / 'platform.db'}",
    )
    with extra_service("pulsar", s, "the broker with token authentication"):
        yield s


def _with_token(s: Settings, token: str | None) -> Settings:
    """The same broker, another credential (a token given by value, or none)."""
    return s.model_copy(
        update={
            "pulsar_auth": False,
            "pulsar_auth_token": SecretStr(token) if token else None,
            "pulsar_auth_token_file": None,
        }
    )


def _auth_failures(s: Settings) -> int:
    return (s.log_dir / "pulsar.log").read_text(errors="replace").count("Failed to authenticate")


def _refused_connect(s: Settings, token: str | None) -> None:
    """A client with this token cannot create a producer; the broker logs why."""
    before = _auth_failures(s)
    client = pulsar.Client(
        s.pulsar_service_url,
        authentication=pulsar.AuthenticationToken(token) if token else None,
        operation_timeout_seconds=REFUSED_TIMEOUT_S,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
    )
    try:
        with pytest.raises(pulsar.PulsarException):
            client.create_producer("persistent://public/default/auth-refused")
    finally:
        client.close()
    assert _auth_failures(s) > before


def test_a_client_without_a_token_is_refused(auth_broker: Settings) -> None:
    _refused_connect(auth_broker, None)
    anonymous = _with_token(auth_broker, None)
    with pytest.raises(RuntimeError, match=r"\(401\)"):
        ensure_partitioned_topic(anonymous, "persistent://public/default/auth-anon", 1)


def test_a_token_signed_with_another_key_is_refused(auth_broker: Settings) -> None:
    forged = _jwt(auth_broker.pulsar_auth_client_role, os.urandom(32))
    _refused_connect(auth_broker, forged)
    with pytest.raises(RuntimeError, match=r"\(401\)"):
        ensure_partitioned_topic(
            _with_token(auth_broker, forged), "persistent://public/default/auth-forged", 1
        )
    assert forged not in (auth_broker.log_dir / "pulsar.log").read_text(errors="replace")


def test_a_valid_token_of_an_ungranted_role_is_refused(auth_broker: Settings) -> None:
    intruder = _with_token(auth_broker, _jwt("intruder", secret_key_file(auth_broker).read_bytes()))
    client = make_client(intruder)
    try:
        with pytest.raises(pulsar.AuthorizationError):
            client.create_producer("persistent://public/default/auth-intruder")
        with pytest.raises(pulsar.AuthorizationError):
            client.subscribe("persistent://public/default/auth-intruder", "s")
    finally:
        client.close()
    with pytest.raises(RuntimeError, match=r"\(403\)"):
        ensure_partitioned_topic(intruder, "persistent://public/default/auth-intruder-p", 1)


def test_a_namespace_grant_allows_produce_and_consume_only(auth_broker: Settings) -> None:
    s, role = auth_broker, "grant-only"
    url = f"{s.pulsar_admin_url}/admin/v2/namespaces/public/default/permissions/{role}"
    granted = httpx.post(url, json=["produce", "consume"], headers=pulsar_admin_token_headers(s))
    assert granted.status_code == 204, granted.text
    reader = _with_token(s, _jwt(role, secret_key_file(s).read_bytes()))
    topic = f"persistent://public/default/auth-grant-{uuid.uuid4().hex[:6]}"
    client = make_client(reader)
    try:
        consumer = client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        client.create_producer(topic).send(b"granted")
        assert consumer.receive(timeout_millis=10_000).data() == b"granted"
    finally:
        client.close()
    # Creating partitioned topics is for tenant admins (the platform's client role is one).
    with pytest.raises(RuntimeError, match=r"\(403\)"):
        ensure_partitioned_topic(reader, topic + "-p", 2)


def test_the_client_token_produces_and_consumes(auth_broker: Settings) -> None:
    s = auth_broker
    assert s.resolved_pulsar_token_file == s.pulsar_auth_dir / "mlp-client.token"
    topic = f"persistent://public/default/auth-roundtrip-{uuid.uuid4().hex[:6]}"
    ensure_partitioned_topic(s, topic, 2)
    ensure_subscription(s, topic, "roundtrip")
    assert topic_partitions(s, topic) == 2
    sent = [f"m-{i}".encode() for i in range(20)]
    client = make_client(s)
    try:
        producer = client.create_producer(topic)
        for i, body in enumerate(sent):
            producer.send(body, partition_key=str(i))
        consumer = client.subscribe(topic, "roundtrip")
        received = receive_batch(consumer, len(sent), window_ms=15_000)
        for message in received:
            consumer.acknowledge(message)
    finally:
        client.close()
    assert sorted(m.data() for m in received) == sorted(sent)


def test_the_flink_job_writes_with_the_token_file_and_never_shows_it(
    auth_broker: Settings,
) -> None:
    s = auth_broker
    write_demo_raw(s, 40, 3, seed=5)
    result = preprocess(s, run_id="auth-preprocess")
    assert (result.features_rows, result.quarantined_rows) == (40, 3)
    assert len(read_all(s, s.features_topic)) == 40
    assert len(read_all(s, s.quarantine_topic)) == 3  # the Flink job's second Pulsar sink
    # Neither token nor key appears in any config, log or artifact outside the auth folder.
    secrets = [p.read_bytes().strip() for p in s.pulsar_auth_dir.iterdir()]
    written = [
        p for p in s.local_dir.rglob("*") if p.is_file() and s.pulsar_auth_dir not in p.parents
    ]
    assert any(p.is_relative_to(s.log_dir / "flink") for p in written)
    leaks = [str(p) for p in written for secret in secrets if secret in p.read_bytes()]
    assert not leaks, leaks
    assert not list((s.state_dir / "flink").glob("*.token"))


# Secrets on the workers: the stream consumers (Ray actors) and a Pulsar Function (Ray actors)
# reach the token-auth broker with the token given by value and by file, and no log, artifact,
# Serve config or Ray dashboard answer shows it.

FUNCTIONS_EXAMPLE = str(PROJECT_DIR / "examples" / "functions" / "iris_functions.py")
WORKER_ROWS = 30


def _worker_settings(auth_broker: Settings, source: str) -> Settings:
    """Client settings of their own topics and tables, the client token by value or by file."""
    token_file = auth_broker.pulsar_role_token_file(auth_broker.pulsar_auth_client_role)
    tag = f"{source}-{uuid.uuid4().hex[:6]}"
    by_value = source == "value"
    return auth_broker.model_copy(
        update={
            "pulsar_auth": False,
            "pulsar_auth_token": SecretStr(token_file.read_text().strip()) if by_value else None,
            "pulsar_auth_token_file": None if by_value else token_file,
            "features_topic": f"persistent://public/default/features-{tag}",
            "predictions_topic": f"persistent://public/default/predictions-{tag}",
            "dead_letter_topic": f"persistent://public/default/dlq-{tag}",
            "stream_subscription": f"stream-{tag}",
            "stream_predictions_table": f"stream_predictions_{tag.replace('-', '_')}",
        }
    )


def _iris_champion(s: Settings) -> None:
    """A champion in the feature order of the dataset and of the example function."""
    if not model_registry.list_versions(s):
        register_small_champion(s)


@dataclass(frozen=True)
class WorkersRan:
    s: Settings
    started: float  # time.time() before the workers ran
    stream: tuple[int, int]  # (published, failed)
    predictions: int  # on the predictions topic
    answers: list[str]  # the function's, sorted


def _run_workers(s: Settings) -> WorkersRan:
    """Stream consumers and a Pulsar Function on Ray, answering WORKER_ROWS and 2 messages."""
    started = time.time()
    _iris_champion(s)
    publish_features(s, feature_rows(s, WORKER_ROWS, seed=9))
    result = run_stream_inference(s, max_messages=WORKER_ROWS, timeout_s=120)
    spec = FunctionSpec(
        py=FUNCTIONS_EXAMPLE,
        classname="IrisPredict",
        name=f"auth-fn-{uuid.uuid4().hex[:6]}",
        inputs=(f"{s.features_topic}-fn",),
        output=f"{s.predictions_topic}-fn",
        user_config=champion_user_config(s),
    )
    client = make_client(s)
    try:
        producer = client.create_producer(spec.inputs[0])
        for body in ("5.1,3.5,1.4,0.2", "6.7,3.0,5.2,2.3"):
            producer.send(body.encode())
    finally:
        client.close()
    answered = run_function(s, spec, max_messages=2, timeout_s=120)
    assert (answered.processed, answered.failed) == (2, 0)
    return WorkersRan(
        s,
        started,
        (result.published, result.failed),
        len(read_all(s, s.predictions_topic)),
        sorted(m.data().decode() for m in read_all(s, spec.output)),
    )


@pytest.fixture(scope="module")
def workers_by_value(auth_broker: Settings) -> WorkersRan:
    return _run_workers(_worker_settings(auth_broker, "value"))


@pytest.mark.parametrize("source", ["value", "file"])
def test_ray_workers_authenticate_with_the_token_by_value_and_by_file(
    auth_broker: Settings, source: str, request: pytest.FixtureRequest
) -> None:
    if source == "value":
        ran = request.getfixturevalue("workers_by_value")
    else:
        ran = _run_workers(_worker_settings(auth_broker, source))
    assert ran.stream == (WORKER_ROWS, 0)
    assert ran.predictions == WORKER_ROWS
    assert ran.answers == ["setosa", "virginica"]


def _dashboard_answers(s: Settings) -> dict[str, bytes]:
    base = f"http://127.0.0.1:{s.ray_dashboard_port}"
    paths = (
        "/api/v0/actors?detail=1&limit=10000",
        "/api/v0/tasks?detail=1&limit=10000",
        "/api/serve/applications/",
        "/api/jobs/",
        "/nodes?view=summary",
    )
    answers = {}
    for path in paths:
        response = httpx.get(base + path, timeout=60)
        assert response.status_code == 200, (path, response.text[:300])
        answers[path] = response.content
    return answers


def test_no_log_artifact_serve_config_or_dashboard_shows_a_secret(
    workers_by_value: WorkersRan,
) -> None:
    s, started = workers_by_value.s, workers_by_value.started
    key = f"serve-key-{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:6]
    served = s.model_copy(
        update={
            "serve_api_key": SecretStr(key),
            "serve_app_name": f"secrets-{tag}",
            "serve_route_prefix": f"/secrets-{tag}",
            "serve_min_replicas": 1,
            "serve_max_replicas": 1,
        }
    )
    try:
        url = start_serving(served)
        answer = httpx.post(
            f"{url}/predict",
            json={"features": [5.1, 3.5, 1.4, 0.2]},
            headers={"X-API-Key": key},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text  # the replica got the key intact
        answers = _dashboard_answers(served)
        assert f"secrets-{tag}".encode() in answers["/api/serve/applications/"]
    finally:
        stop_serving(served)
    secrets = [s.pulsar_token().encode(), key.encode()]
    assert all(secrets)
    shown = [path for path, body in answers.items() for secret in secrets if secret in body]
    assert not shown, shown
    # Files: this module's logs, state and artifacts (the token and the secrets files aside),
    # and the Ray session's logs written during the test.
    kept = (s.pulsar_auth_dir, s.state_dir / "secrets")
    ray_logs = get_settings().state_dir / "ray" / "session_latest" / "logs"
    written = [
        p
        for p in [*s.local_dir.rglob("*"), *ray_logs.rglob("*")]
        if p.is_file() and not any(k in p.parents for k in kept) and p.stat().st_mtime >= started
    ]
    assert any(p.is_relative_to(ray_logs) for p in written)
    leaks = [str(p) for p in written for secret in secrets if secret in p.read_bytes()]
    assert not leaks, leaks
