"""Online serving: the champion model behind a Ray Serve deployment (HTTP and handle).

Between requests a replica checks every `model_refresh_s` whether another version became
champion (a promotion or a rollback) and switches to it; a pinned version never changes.
HTTP: POST {"rows": [[f1, f2, ...], ...]} to http://127.0.0.1:<serve_port>/predict.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from mlplatform import model_registry
from mlplatform.ray_runtime import connect
from mlplatform.settings import Settings

APP_NAME = "model"
ROUTE = "/predict"


class InvalidRows(ValueError):
    """The request's rows are not a list of rows of finite numbers in the model's order."""


def validate_rows(rows: Any, n_features: int, max_rows: int) -> np.ndarray:
    if not isinstance(rows, list) or not rows:
        raise InvalidRows("'rows' must be a non-empty list of rows")
    if len(rows) > max_rows:
        raise InvalidRows(f"{len(rows)} rows; at most {max_rows} per request")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n_features:
            raise InvalidRows(f"row {i}: expected a list of {n_features} numbers")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRows(f"row {i}, feature {j}: {value!r} is not a number")
            if not math.isfinite(value):
                raise InvalidRows(f"row {i}, feature {j}: {value!r} is not finite")
    return np.asarray(rows, dtype=np.float64)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class ModelServer:
    """Serves one model version; follows the registry's champion unless pinned."""

    def __init__(self, settings: dict, model_version: int | None = None) -> None:
        self.s = Settings(**settings)
        self.pinned = model_version is not None
        self._load(model_registry.get_version(self.s, model_version))

    def _load(self, row: model_registry.ModelVersion) -> None:
        self.ref = model_registry.model_ref(row)
        self.model = model_registry.load_model(self.ref)
        self.checked_at = time.monotonic()

    def _follow_champion(self) -> None:
        if self.pinned or time.monotonic() - self.checked_at < self.s.model_refresh_s:
            return
        champion = model_registry.get_version(self.s)
        if champion.version != self.ref.version:
            self._load(champion)
        self.checked_at = time.monotonic()

    def predict(self, rows: list[list[float]]) -> dict[str, Any]:
        self._follow_champion()
        x = validate_rows(rows, len(self.ref.feature_order), self.s.serve_max_rows)
        probabilities = self.model.predict_proba(x)
        return {
            "model_version": self.ref.version,
            "feature_order": list(self.ref.feature_order),
            "predictions": [self.ref.label_names[int(i)] for i in probabilities.argmax(axis=1)],
            "probabilities": probabilities.round(6).tolist(),
        }

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
        if not isinstance(body, dict) or "rows" not in body:
            return JSONResponse({"error": 'expected {"rows": [[...], ...]}'}, status_code=400)
        try:
            return JSONResponse(self.predict(body["rows"]))
        except InvalidRows as error:
            return JSONResponse({"error": str(error)}, status_code=422)


def start_serving(s: Settings, model_version: int | None = None) -> str:
    """Deploy (or redeploy) the model application; returns its HTTP address."""
    connect(s)
    serve.start(http_options={"host": "127.0.0.1", "port": s.serve_port})
    app = ModelServer.bind(s.model_dump(mode="json"), model_version)
    serve.run(app, name=APP_NAME, route_prefix=ROUTE)
    return f"http://127.0.0.1:{s.serve_port}{ROUTE}"


def stop_serving(s: Settings) -> None:
    connect(s)
    serve.delete(APP_NAME)


def serving_status(s: Settings) -> str:
    connect(s)
    status = serve.status().applications.get(APP_NAME)
    return status.status if status else "NOT_DEPLOYED"
