"""The same example file on Pulsar's own functions worker: `pulsar-admin functions create`,
answered by `functions trigger`, with token authentication on.

The module starts a second standalone broker of its own, with the functions worker
(MLP_PULSAR_FUNCTIONS_WORKER) and token authentication (MLP_PULSAR_AUTH: pulsar-admin, the REST
calls, the worker and its Python instances all authenticate with tokens read from files) on free
loopback ports and with state under a temporary folder,
through the same infra/services.py code as `make up`, and always stops it. The platform's broker
is not used. A broker that does not start fails the tests; nothing is skipped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from infra.services import pulsar_admin_token_headers
from mlplatform.inference.stream.pulsar_functions import champion_user_config
from mlplatform.registry import model_registry
from mlplatform.settings import PROJECT_DIR, Settings, get_settings
from tests.helpers import extra_service

pytestmark = pytest.mark.integration

# pulsar-admin runs in the distribution's folder: the file's path must be absolute.
EXAMPLE = str(PROJECT_DIR / "examples" / "functions" / "iris_functions.py")
MODEL_ORDER = ["petal_length", "petal_width", "sepal_length", "sepal_width"]
INPUT_ORDER = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [0, 60, 120, 10, 75, 140]  # two of each class
NAMES = {"IrisPredict": "iris-predict", "IrisPredictBulk": "iris-predict-bulk"}
RUNNING_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model() -> DecisionTreeClassifier:
    iris = load_iris()
    columns = [INPUT_ORDER.index(name) for name in MODEL_ORDER]
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(
        iris.data[:, columns], iris.target
    )


def _expected(rows: list[list[float]]) -> list[str]:
    columns = [INPUT_ORDER.index(name) for name in MODEL_ORDER]
    labels = load_iris().target_names
    return [str(labels[p]) for p in _model().predict(np.asarray(rows)[:, columns])]


def _pulsar_admin(s: Settings) -> list[str]:
    """pulsar-admin with the admin role's token, by file (never on the command line)."""
    token = s.pulsar_role_token_file(s.pulsar_auth_admin_role)
    return [
        str(s.pulsar_home / "bin" / "pulsar-admin"),
        "--admin-url",
        s.pulsar_admin_url,
        "--auth-plugin",
        "org.apache.pulsar.client.impl.auth.AuthenticationToken",
        "--auth-params",
        f"file://{token}",
    ]


def _admin(s: Settings, *args: str) -> str:
    completed = subprocess.run(
        [*_pulsar_admin(s), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    return completed.stdout.strip()


def _trigger(s: Settings, name: str, value: str) -> str:
    """`pulsar-admin functions trigger`: publish to the input, answer with the output."""
    return _admin(
        s,
        "functions",
        "trigger",
        "--tenant",
        "public",
        "--namespace",
        "default",
        "--name",
        name,
        "--trigger-value",
        value,
    )


@pytest.fixture(scope="module")
def worker_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A standalone broker with the functions worker, and a registry with one champion model."""
    root: Path = tmp_path_factory.mktemp("functions-worker")
    (root / "pulsar").symlink_to(get_settings().pulsar_home)  # the installed distribution
    s = Settings(
        local_dir=root,
        pulsar_service_url=f"pulsar://127.0.0.1:{_free_port()}",
        pulsar_admin_url=f"http://127.0.0.1:{_free_port()}",
        pulsar_functions_worker=True,
        pulsar_auth=True,
        database_url=f"sqlite:///{root / 'registry.db'}",
    )
    row = model_registry.register(
        s,
        _model(),
        family="decision_tree",
        params={"max_depth": 3},
        metrics={},
        training_table="iris",
        training_snapshot_id=0,
        training_rows=150,
        feature_order=MODEL_ORDER,
        label_names=[str(n) for n in load_iris().target_names],
    )
    model_registry.promote(s, row.version)
    with extra_service("pulsar", s, "the broker with the functions worker"):
        yield s


def _create_command(s: Settings, classname: str, name: str, tag: str, config: str) -> list[str]:
    """`pulsar-admin functions create` for one class of the example file."""
    return [
        *_pulsar_admin(s),
        "functions",
        "create",
        "--py",
        EXAMPLE,
        "--classname",
        f"iris_functions.{classname}",
        "--tenant",
        "public",
        "--namespace",
        "default",
        "--name",
        name,
        "--inputs",
        f"persistent://public/default/{name}-in-{tag}",
        "--output",
        f"persistent://public/default/{name}-out-{tag}",
        "--user-config",
        config,
    ]


@pytest.fixture(scope="module")
def functions(worker_broker: Settings) -> Settings:
    """Both classes of the example file, created with pulsar-admin and running."""
    s, tag = worker_broker, uuid.uuid4().hex[:6]
    user_config = json.dumps(champion_user_config(s))
    creating = [
        subprocess.Popen(
            _create_command(s, classname, name, tag, user_config),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for classname, name in NAMES.items()
    ]
    for process in creating:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0 and "Created successfully" in output, output[-2000:]
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    pending = set(NAMES.values())
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            url = f"{s.pulsar_admin_url}/admin/v3/functions/public/default/{name}/status"
            response = httpx.get(url, headers=pulsar_admin_token_headers(s), timeout=10)
            if response.status_code == 200 and response.json().get("numRunning") == 1:
                pending.discard(name)
        time.sleep(1.0)
    logs = sorted((s.log_dir / "pulsar-functions").rglob("*.log"))
    tails = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in logs)
    assert not pending, f"functions {pending} not running after {RUNNING_TIMEOUT_S:.0f}s\n{tails}"
    return s


def _rows() -> tuple[list[list[float]], list[str]]:
    iris = load_iris()
    rows = [[float(v) for v in iris.data[i]] for i in ROWS]
    return rows, [",".join(str(v) for v in row) for row in rows]


def test_single_prediction_function_answers_trigger(functions: Settings) -> None:
    s, (rows, text) = functions, _rows()
    expected = _expected(rows)
    answer = _trigger(s, NAMES["IrisPredict"], text[0])
    assert answer == expected[0]
    # The rest through the REST endpoint pulsar-admin calls (no JVM start per row).
    url = f"{s.pulsar_admin_url}/admin/v3/functions/public/default/{NAMES['IrisPredict']}/trigger"
    headers = pulsar_admin_token_headers(s)
    answers = [
        httpx.post(url, files={"data": (None, t)}, headers=headers, timeout=60).text
        for t in text[1:]
    ]
    assert answers == expected[1:]


def test_bulk_prediction_function_answers_trigger(functions: Settings) -> None:
    s, (rows, text) = functions, _rows()
    answer = _trigger(s, NAMES["IrisPredictBulk"], ":".join(text))
    assert answer.split(",") == _expected(rows)


def test_a_request_without_a_token_is_refused_and_no_log_shows_a_token(
    functions: Settings,
) -> None:
    url = f"{functions.pulsar_admin_url}/admin/v3/functions/public/default"
    assert httpx.get(url, timeout=10).status_code == 401
    tokens = [p.read_bytes().strip() for p in functions.pulsar_auth_dir.glob("*.token")]
    logs = [p for p in functions.log_dir.rglob("*") if p.is_file()]
    assert any("pulsar-functions" in str(p) for p in logs)
    leaks = [str(p) for p in logs for token in tokens if token in p.read_bytes()]
    assert not leaks, leaks
