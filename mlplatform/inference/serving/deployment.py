"""Online serving: the champion model behind a FastAPI app on Ray Serve.

Endpoints, below settings.serve_route_prefix on http://127.0.0.1:<serve_port>:
POST /predict (one row), POST /predict/bulk (many rows), GET /health, GET /model,
and FastAPI's /docs and /openapi.json. Every answer carries the model version (also in the
X-Model-Version header), and every prediction is the one prediction record
(`mlplatform.inference.predictions`) with the probabilities by class name. A replica follows the
champion with `registry.champion.ChampionFollower`, checking every `model_refresh_s` on a thread
of its own (no request waits for the registry, and an idle replica follows too) whether another
version became champion (a promotion or a rollback); a pinned version never changes.
A replica that cannot load its model keeps running and answers 503 until it can.
Tree models answer through `fast_predict` (the same probabilities, without scikit-learn's
per-call overhead). The application lives in the Ray cluster, so it outlives the process that
deployed it (the CLI, or a flow run in the worker).
"""

# No `from __future__ import annotations`: Ray Serve rebuilds the endpoints' signatures for
# FastAPI, which then cannot resolve string annotations.
import gc
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from ray import serve
from ray.serve import Application

from mlplatform.connectors.niceness import set_niceness
from mlplatform.connectors.ray_runtime import connect
from mlplatform.dataset.prediction_record import MODEL_VERSION
from mlplatform.inference.fast_predict import load_compiled
from mlplatform.inference.features import InvalidFeatures, parse_features
from mlplatform.inference.serving.api_schema import (
    BulkPredictRequest,
    BulkPredictResponse,
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    describe_predictions,
    describe_request_errors,
    http_status,
    parse_rows,
)
from mlplatform.inference.user_predictor import model_loader
from mlplatform.registry import model_registry
from mlplatform.registry.champion import ChampionFollower, LoadedModel
from mlplatform.settings import Settings

logger = logging.getLogger("ray.serve")

VERSION_HEADER = "X-Model-Version"
ACTIONS = ("start", "stop", "status")
API_KEY = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Needed when MLP_SERVE_API_KEY is set."
)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "The body is not valid JSON.",
        401: "Missing or wrong X-API-Key (only when an API key is configured).",
        413: "More rows than MLP_SERVE_MAX_ROWS.",
        422: "Wrong shape, count, name or value of features; the message names row and feature.",
        503: "No model could be loaded (the message says why).",
    }.items()
}
SINGLE_ERRORS = {code: doc for code, doc in ERRORS.items() if code != 413}

app = FastAPI(
    title="mlplatform model API",
    description="Predictions of the registry's champion model (or a pinned version).",
    version="1",
    strict_content_type=False,  # a body without Content-Type is read as JSON
)


class ModelUnavailable(RuntimeError):
    """No model version could be loaded yet."""


@app.exception_handler(RequestValidationError)
async def _request_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
    status, message = describe_request_errors(error.errors())
    return JSONResponse({"detail": message}, status_code=status)


@app.exception_handler(InvalidFeatures)
async def _rows_invalid(_: Request, error: InvalidFeatures) -> JSONResponse:
    body = ErrorResponse(detail=str(error), row=error.row, feature=error.feature)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=http_status(error))


@app.exception_handler(ModelUnavailable)
async def _unavailable(_: Request, error: ModelUnavailable) -> JSONResponse:
    return JSONResponse({"detail": f"no model loaded: {error}"}, status_code=503)


async def require_api_key(api_key: str | None = Security(API_KEY)) -> None:
    """401 unless the X-API-Key header matches the configured key (when one is configured)."""
    serve.get_replica_context().servable_object.authorize(api_key)


@lru_cache
def guarded_paths() -> frozenset[str]:
    """The routes behind the API key: those whose OpenAPI operation names the key."""
    paths = app.openapi()["paths"]
    return frozenset(p for p, ops in paths.items() if any("security" in o for o in ops.values()))


class ApiKeyFirst:
    """The API key is checked before anything reads the request: without the key a guarded
    route answers 401 whatever the body (FastAPI parses the body before dependencies run)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            root, path = scope.get("root_path", ""), scope["path"]
            if root and path.startswith(root):
                path = path[len(root) :]
            if path in guarded_paths():
                key = dict(scope["headers"]).get(b"x-api-key")
                try:
                    await require_api_key(key.decode("latin-1") if key is not None else None)
                except HTTPException as error:
                    body = {"detail": error.detail}
                    answer = JSONResponse(body, error.status_code, headers=error.headers)
                    await answer(scope, receive, send)
                    return
        await self.inner(scope, receive, send)


app.add_middleware(ApiKeyFirst)


@serve.deployment
@serve.ingress(app)
class ModelServer:
    """Serves one model version; follows the registry's champion unless pinned."""

    def __init__(self, s: Settings, model_version: int | None = None) -> None:
        self.s, self.ranges = s, s.dataset_spec.ranges
        set_niceness(self.s.latency_actor_niceness)
        load = model_loader(self.s, load_compiled)
        self.follower = ChampionFollower(self.s, model_version, load=load)
        self.error = "not loaded yet"
        self._reload()
        if model_version is None:  # follow the champion, with or without traffic
            threading.Thread(target=self._follow, name="model-refresh", daemon=True).start()
        gc.collect()  # full collections walk every object of Ray and scikit-learn: keep them
        gc.freeze()  # out of it, as they live as long as the replica

    def _reload(self) -> None:
        try:
            loaded = self.follower.changed()
        except Exception as error:  # noqa: BLE001 - a replica outlives a bad artifact or registry
            self.error = str(error)
            logger.warning("model not loaded (still serving %s): %s", self.version(), error)
            return
        if loaded is not None:
            logger.info("serving model version %s", loaded.ref.version)

    def _follow(self) -> None:
        """Check the registry's champion every model_refresh_s, on this thread: no request
        waits for the registry, and a promotion is served within one period even when idle."""
        while True:
            time.sleep(self.follower.seconds_to_check())
            self._reload()

    def version(self) -> int | None:
        loaded = self.follower.loaded
        return loaded.ref.version if loaded else None

    def current(self) -> LoadedModel:
        """The model to answer with: the pinned version, or the champion as of at most
        model_refresh_s ago (the refresher thread checks; this request does not wait)."""
        if self.follower.loaded is None:  # nothing to answer with: try now (the error path)
            self._reload()
            if self.follower.loaded is None:
                raise ModelUnavailable(self.error)
        return self.follower.loaded

    def authorize(self, api_key: str | None) -> None:
        key = self.s.serve_api_key
        expected = key.get_secret_value().encode() if key else b""
        if expected and not (api_key and hmac.compare_digest(api_key.encode(), expected)):
            raise HTTPException(
                401,
                "missing or wrong API key: send it in the X-API-Key header",
                headers={"WWW-Authenticate": "X-API-Key"},
            )

    def _predict(self, loaded: LoadedModel, x: Any, response: Response) -> list[dict[str, Any]]:
        response.headers[VERSION_HEADER] = str(loaded.ref.version)
        probabilities = loaded.model.predict_proba(x)
        return describe_predictions(probabilities, loaded.model.classes_, loaded.ref.label_names)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=SINGLE_ERRORS,
        dependencies=[Depends(require_api_key)],
        summary="Predict one row",
    )
    async def predict(self, body: PredictRequest, response: Response) -> dict[str, Any]:
        # On the event loop: one row takes well under a millisecond, less than a thread hop.
        loaded = self.current()
        x = [parse_features(body.features, loaded.ref.feature_order, ranges=self.ranges)]
        return {MODEL_VERSION: loaded.ref.version, **self._predict(loaded, x, response)[0]}

    @app.post(
        "/predict/bulk",
        response_model=BulkPredictResponse,
        responses=ERRORS,
        dependencies=[Depends(require_api_key)],
        summary="Predict many rows",
    )
    def predict_bulk(self, body: BulkPredictRequest, response: Response) -> dict[str, Any]:
        loaded = self.current()
        x = parse_rows(body.rows, loaded.ref.feature_order, self.s.serve_max_rows, self.ranges)
        return {
            MODEL_VERSION: loaded.ref.version,
            "predictions": self._predict(loaded, x, response),
        }

    @app.get(
        "/health",
        response_model=HealthResponse,
        summary="Liveness and the model version",
        responses={503: ERRORS[503]},
    )
    def health(self, response: Response) -> HealthResponse:
        loaded = self.current()
        response.headers[VERSION_HEADER] = str(loaded.ref.version)
        return HealthResponse(model_version=loaded.ref.version, pinned=self.follower.pinned)

    @app.get(
        "/model",
        response_model=ModelInfo,
        summary="The model being served",
        dependencies=[Depends(require_api_key)],
        responses={k: ERRORS[k] for k in (401, 503)},
    )
    def model(self, response: Response) -> ModelInfo:
        row = self.current().row
        response.headers[VERSION_HEADER] = str(row.version)
        return ModelInfo(
            version=row.version,
            pinned=self.follower.pinned,
            stage=row.stage,
            family=row.family,
            params=row.params,
            feature_order=row.feature_order,
            label_names=row.label_names,
            metrics=row.metrics,
            training_snapshot_id=row.training_snapshot_id,
            training_rows=row.training_rows,
            created_at=row.created_at,
            promoted_at=row.promoted_at,
        )


def build_app(s: Settings, model_version: int | None = None) -> Application:
    """The application with replicas and CPUs from settings: a fixed count when min == max,
    otherwise autoscaling on ongoing requests."""
    # User code on the replica's own event loop saves a thread hop per request (the sync
    # endpoints still run in a thread pool); access logs are a file write per request.
    actor_options = {
        "num_cpus": s.serve_replica_cpus,
        "num_gpus": s.serve_replica_gpus,
        "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
    }
    options: dict[str, Any] = {
        "ray_actor_options": actor_options,
        "logging_config": {"enable_access_log": s.serve_access_log},
    }
    if s.serve_min_replicas == s.serve_max_replicas:
        options["num_replicas"] = s.serve_min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": s.serve_min_replicas,
            "max_replicas": s.serve_max_replicas,
            "target_ongoing_requests": 2,
        }
    return ModelServer.options(**options).bind(s, model_version)


def serving_address(s: Settings) -> str:
    return f"http://127.0.0.1:{s.serve_port}{s.serve_route_prefix.rstrip('/')}"


def start_serving(s: Settings, model_version: int | None = None) -> str:
    """Deploy (or redeploy) the application; returns its HTTP address (endpoints below it)."""
    model_registry.get_version(s, model_version)  # no champion yet: say so here, not as a 503
    connect(s)
    serve.start(http_options={"host": "127.0.0.1", "port": s.serve_port})
    serve.run(build_app(s, model_version), name=s.serve_app_name, route_prefix=s.serve_route_prefix)
    return serving_address(s)


def stop_serving(s: Settings) -> None:
    connect(s)
    serve.delete(s.serve_app_name)


def serving_status(s: Settings) -> str:
    """The application's status: RUNNING, DEPLOYING, DEPLOY_FAILED, ... or NOT_DEPLOYED."""
    connect(s)
    status = serve.status().applications.get(s.serve_app_name)
    return str(status.status.value) if status else "NOT_DEPLOYED"


@dataclass(frozen=True)
class ServingState:
    action: str
    status: str
    address: str
    model_version: int | None
    detail: str


def describe_serving(s: Settings, action: str = "status") -> ServingState:
    """The application's status, and the model version its /health endpoint reports."""
    status, address = serving_status(s), serving_address(s)
    version, detail = None, "not deployed"
    if status != "NOT_DEPLOYED":
        try:
            health = httpx.get(f"{address}/health", timeout=10)
            body = health.json()
            version = body.get("model_version")
            detail = f"/health {health.status_code}: {body.get('detail', body.get('status'))}"
        except (httpx.HTTPError, ValueError) as error:
            detail = f"/health did not answer: {error}"
    return ServingState(action, status, address, version, detail)


def manage_serving(s: Settings, action: str, model_version: int | None = None) -> ServingState:
    """start (or redeploy), stop, or report the serving application."""
    if action not in ACTIONS:
        raise ValueError(f"unknown serving action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "start":
        start_serving(s, model_version)
    elif action == "stop":
        stop_serving(s)
    return describe_serving(s, action)
