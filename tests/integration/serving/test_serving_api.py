"""The model's HTTP API on the real Ray Serve: predictions, every refusal with its status and
message, health, model info, the OpenAPI schema, the API key, pinning, a model that cannot be
loaded, champion following, and the serving flow. Each deployment here is an application of
this module's own (own name and route prefix), deleted at the end."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import skops.io
from pydantic import SecretStr
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlplatform.inference.serving.deployment import (
    manage_serving,
    serving_status,
    start_serving,
    stop_serving,
)
from mlplatform.registry import model_registry
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import Settings, get_settings
from mlplatform.training.external_model import import_model
from mlplatform.training.retrain import retrain
from tests.helpers import module_settings

pytestmark = pytest.mark.integration

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
MAX_ROWS = 50
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    """A registry of this module's own with a trained champion (and other candidates)."""
    tag = uuid.uuid4().hex[:6]
    s = module_settings(
        isolated,
        "serve",
        model_refresh_s=1.0,
        serve_max_rows=MAX_ROWS,
        serve_app_name=f"model-it-{tag}",
        serve_route_prefix=f"/it-{tag}",
        serve_min_replicas=1,
        serve_max_replicas=1,
    )
    append_features(s, 400, seed=43)  # the Flink job's output, without running it
    assert retrain(s).decision == "promote"
    return s


@pytest.fixture(scope="module")
def api(lake: Settings) -> Iterator[str]:
    """The application following the champion; its address."""
    url = start_serving(lake)
    yield url
    stop_serving(lake)
    assert serving_status(lake) == "NOT_DEPLOYED"


def _champion(s: Settings) -> int:
    return model_registry.get_version(s).version


def _other_version(s: Settings) -> int:
    return next(v.version for v in model_registry.list_versions(s) if v.stage != "champion")


def _named(values: list[float]) -> dict[str, float]:
    return dict(zip(get_settings().feature_columns, values, strict=True))


def test_single_prediction_by_position_and_by_name(lake: Settings, api: str) -> None:
    champion = _champion(lake)
    for features in (SETOSA, _named(SETOSA)):
        response = httpx.post(f"{api}/predict", json={"features": features}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "setosa" and body["class_index"] == 0
        assert body["model_version"] == champion
        assert response.headers["X-Model-Version"] == str(champion)
        assert list(body["probabilities"]) == lake.label_names
        assert math.isclose(sum(body["probabilities"].values()), 1.0, abs_tol=1e-4)


def test_bulk_prediction_by_position_and_by_name(lake: Settings, api: str) -> None:
    rows = [SETOSA, VIRGINICA, _named(VIRGINICA), _named(SETOSA)]
    response = httpx.post(f"{api}/predict/bulk", json={"rows": rows}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == _champion(lake)
    assert response.headers["X-Model-Version"] == str(body["model_version"])
    labels = [p["label"] for p in body["predictions"]]
    assert labels == ["setosa", "virginica", "virginica", "setosa"]
    assert [p["class_index"] for p in body["predictions"]] == [0, 2, 2, 0]
    assert body["predictions"][0] == body["predictions"][3]


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "wrong count",
        "/predict",
        {"json": {"features": [5.1, 3.5, 1.4]}},
        422,
        "expected 4 features (sepal_length, sepal_width, petal_length, petal_width), got 3",
    ),
    (
        "wrong count in a row",
        "/predict/bulk",
        {"json": {"rows": [SETOSA, [1.0] * 5]}},
        422,
        "row 1: expected 4 features",
    ),
    (
        "non-numeric",
        "/predict/bulk",
        {"json": {"rows": [SETOSA, [6.7, "x", 5.2, 2.3]]}},
        422,
        "row 1, feature 1 (sepal_width): 'x' is not a number",
    ),
    (
        "null",
        "/predict",
        {"json": {"features": [5.1, 3.5, None, 0.2]}},
        422,
        "feature 2 (petal_length): None is not a number",
    ),
    (
        "NaN",
        "/predict/bulk",
        {"content": b'{"rows": [[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, NaN, 0.2]]}', "headers": JSON},
        422,
        "row 1, feature 2 (petal_length): nan is not a finite number",
    ),
    (
        "Infinity",
        "/predict",
        {"content": b'{"features": [-Infinity, 3.5, 1.4, 0.2]}', "headers": JSON},
        422,
        "feature 0 (sepal_length): -inf is not a finite number",
    ),
    (
        "too many rows",
        "/predict/bulk",
        {"json": {"rows": [SETOSA] * (MAX_ROWS + 1)}},
        413,
        f"{MAX_ROWS + 1} rows in one request; at most {MAX_ROWS}",
    ),
    ("no rows", "/predict/bulk", {"json": {"rows": []}}, 422, "'rows' is empty"),
    (
        "bad JSON",
        "/predict",
        {"content": b'{"features": [5.1, 3.5,', "headers": JSON},
        400,
        "the body is not valid JSON",
    ),
    (
        "bad JSON bulk",
        "/predict/bulk",
        {"content": b"rows=1", "headers": JSON},
        400,
        "the body is not valid JSON",
    ),
    (
        "unknown name",
        "/predict",
        {"json": {"features": {**_named(SETOSA), "petal_widht": 0.2}}},
        422,
        "unknown feature name(s) petal_widht; expected sepal_length",
    ),
    (
        "missing name",
        "/predict/bulk",
        {"json": {"rows": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}]}},
        422,
        "row 0: missing feature(s) petal_width",
    ),
    ("wrong key", "/predict", {"json": {"rows": [SETOSA]}}, 422, "features: Field required"),
    ("form body", "/predict", {"data": {"features": "1"}}, 422, "Content-Type: application/json"),
]


@pytest.mark.parametrize(
    ("path", "request_kwargs", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_name_what_and_where(
    api: str, path: str, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = httpx.post(f"{api}{path}", timeout=30, **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_health_model_info_and_openapi(lake: Settings, api: str) -> None:
    champion = model_registry.get_version(lake)
    health = httpx.get(f"{api}/health", timeout=30)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model_version": champion.version, "pinned": False}
    info = httpx.get(f"{api}/model", timeout=30).json()
    assert info["version"] == champion.version and info["stage"] == "champion"
    assert info["feature_order"] == lake.feature_columns
    assert info["label_names"] == lake.label_names
    assert info["metrics"]["accuracy"] == champion.metrics["accuracy"]
    schema = httpx.get(f"{api}/openapi.json", timeout=30).json()
    assert {"/predict", "/predict/bulk", "/health", "/model"} <= set(schema["paths"])
    bulk = schema["paths"]["/predict/bulk"]["post"]
    assert {"200", "400", "401", "413", "422", "503"} <= set(bulk["responses"])
    request = schema["components"]["schemas"]["PredictRequest"]["properties"]["features"]
    assert "feature order" in request["description"]
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    docs = httpx.get(f"{api}/docs", timeout=30)
    assert docs.status_code == 200 and f"{lake.serve_route_prefix}/openapi.json" in docs.text


def _version_within(url: str, expected: int, seconds: float) -> int:
    """The version answering at url once it is `expected`, or the last one seen at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        seen = httpx.post(f"{url}/predict", json={"features": SETOSA}, timeout=30)
        version = seen.json()["model_version"]
        if version == expected or time.monotonic() > deadline:
            return version
        time.sleep(0.2)


def test_a_promotion_switches_the_version_answering(lake: Settings, api: str) -> None:
    current, other = _champion(lake), _other_version(lake)
    assert _version_within(api, current, 0) == current
    model_registry.promote(lake, other)
    try:
        assert _version_within(api, other, lake.model_refresh_s + 5) == other
        assert httpx.get(f"{api}/health", timeout=30).json()["model_version"] == other
    finally:
        model_registry.promote(lake, current)
    assert _version_within(api, current, lake.model_refresh_s + 5) == current


@dataclass
class Guarded:
    """An application pinned to a non-champion version, behind an API key."""

    url: str
    settings: Settings
    version: int
    artifact: Path
    original: bytes

    def restore(self) -> None:
        self.artifact.write_bytes(self.original)


@contextmanager
def _guarded(lake: Settings, name: str, damaged: bool) -> Iterator[Guarded]:
    """A Guarded application of its own (`name`), deployed while the pinned artifact was
    damaged when `damaged`; the artifact restored and the application deleted at the end."""
    s = lake.model_copy(
        update={
            "serve_app_name": f"{lake.serve_app_name}-{name}",
            "serve_route_prefix": f"{lake.serve_route_prefix}-{name}",
            "serve_api_key": SecretStr(f"key-{uuid.uuid4().hex}"),
        }
    )
    version = _other_version(lake)
    artifact = Path(model_registry.get_version(lake, version).artifact_path)
    state = Guarded("", s, version, artifact, artifact.read_bytes())
    if damaged:
        artifact.write_bytes(state.original[:-1] + bytes([state.original[-1] ^ 0xFF]))
    try:
        state.url = start_serving(s, version)
        yield state
    finally:
        state.restore()
        stop_serving(s)


def _key(s: Settings) -> str:
    return s.serve_api_key.get_secret_value() if s.serve_api_key else ""


@pytest.fixture
def damaged(lake: Settings) -> Iterator[Guarded]:
    """Deployed while its model's artifact was damaged: it never loaded a model. Restored and
    deleted right after its test, whatever the test did."""
    with _guarded(lake, "damaged", damaged=True) as state:
        yield state


@pytest.fixture(scope="module")
def guarded(lake: Settings) -> Iterator[Guarded]:
    with _guarded(lake, "guarded", damaged=False) as state:
        yield state


def test_503_while_the_model_cannot_be_loaded_then_recovers(damaged: Guarded) -> None:
    guarded = damaged
    key = {"X-API-Key": _key(guarded.settings)}
    assert serving_status(guarded.settings) == "RUNNING"  # the replica runs, without a model
    health = httpx.get(f"{guarded.url}/health", timeout=30)
    assert health.status_code == 503
    assert "no model loaded" in health.json()["detail"] and "SHA-256" in health.json()["detail"]
    predict = httpx.post(
        f"{guarded.url}/predict", json={"features": SETOSA}, headers=key, timeout=30
    )
    assert predict.status_code == 503, predict.text
    guarded.restore()
    health = httpx.get(f"{guarded.url}/health", timeout=30)
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "model_version": guarded.version, "pinned": True}


def test_api_key_guards_predictions_and_health_stays_open(lake: Settings, guarded: Guarded) -> None:
    key = _key(guarded.settings)
    assert key not in repr(guarded.settings)  # never printed with the settings
    single, bulk = {"features": SETOSA}, {"rows": [SETOSA]}
    for path, body in (("/predict", single), ("/predict/bulk", bulk)):
        for headers in ({}, {"X-API-Key": "wrong"}):
            refused = httpx.post(f"{guarded.url}{path}", json=body, headers=headers, timeout=30)
            assert refused.status_code == 401, refused.text
            assert "X-API-Key" in refused.json()["detail"]
    # The key is checked before the body: no validation detail leaks without it.
    assert httpx.post(f"{guarded.url}/predict", json={}, timeout=30).status_code == 401
    assert httpx.get(f"{guarded.url}/model", timeout=30).status_code == 401
    assert httpx.get(f"{guarded.url}/health", timeout=30).status_code == 200
    answered = httpx.post(
        f"{guarded.url}/predict", json=single, headers={"X-API-Key": key}, timeout=30
    )
    assert answered.status_code == 200, answered.text
    # Pinned: the non-champion version answers, whatever the champion is.
    assert answered.json()["model_version"] == guarded.version != _champion(lake)
    info = httpx.get(f"{guarded.url}/model", headers={"X-API-Key": key}, timeout=30).json()
    assert info["version"] == guarded.version and info["pinned"] is True


def test_the_serving_flow_reports_the_application(
    lake: Settings, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.serving import serving

    for name in ("database_url", "serve_app_name", "serve_route_prefix"):
        monkeypatch.setenv(f"MLP_{name.upper()}", str(getattr(lake, name)))
    get_settings.cache_clear()
    try:
        state = serving(action="status")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert state["status"] == "RUNNING" and state["address"] == api
    assert state["model_version"] == _champion(lake)
    assert state["detail"] == "/health 200: ok"
    with pytest.raises(ValueError, match="unknown serving action 'restart'"):
        manage_serving(lake, "restart")


def test_two_models_serve_side_by_side_each_with_its_champion(
    lake: Settings, api: str, tmp_path: Path
) -> None:
    """A second model in the same registry, trained elsewhere (a skops file imported, scored and
    promoted), served as an application of its own next to the first: each answers with its
    own champion, and stopping one leaves the other serving."""
    second = lake.model_copy(
        update={
            "model_name": "second",
            "serve_app_name": f"{lake.serve_app_name}-second",
            "serve_route_prefix": f"{lake.serve_route_prefix}-second",
        }
    )
    iris = load_iris()
    elsewhere = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    skops.io.dump(elsewhere.fit(iris.data, iris.target), tmp_path / "elsewhere.skops")
    imported = import_model(second, tmp_path / "elsewhere.skops")
    assert (imported.decision, imported.reason) == ("promote", "no champion yet")
    mine = _champion(second)
    assert mine == imported.version
    firsts = {v.version for v in model_registry.list_versions(lake)}
    assert mine not in firsts
    url = start_serving(second)
    try:
        answers = [
            httpx.post(f"{address}/predict", json={"features": SETOSA}, timeout=30)
            for address in (url, api)
        ]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert answers[0].json()["model_version"] == mine
        assert answers[1].json()["model_version"] in firsts  # the first model's, whichever
        assert {a.json()["label"] for a in answers} == {"setosa"}
    finally:
        stop_serving(second)
    assert serving_status(second) == "NOT_DEPLOYED" and serving_status(lake) == "RUNNING"
