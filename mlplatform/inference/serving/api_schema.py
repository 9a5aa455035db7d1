"""The serving API's request and response models, and the plain functions that check requests.

Rows arrive as lists in the model's feature order or as objects of feature name -> number.
Every refusal says what was wrong and where ("row 3, feature 1 (sepal_width): ..."), so the
checks live here as plain functions (unit-tested without Ray); the models only describe the
shapes for the OpenAPI schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

FEATURES_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "array", "items": {"type": "number"}, "title": "In the model's feature order"},
        {"type": "object", "additionalProperties": {"type": "number"}, "title": "By name"},
    ]
}


class InvalidRequest(ValueError):
    """A request the API refuses: its HTTP status and, when known, the row and feature."""

    def __init__(
        self,
        message: str,
        status_code: int = 422,
        row: int | None = None,
        feature: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.row = row
        self.feature = feature


def _where(row: int | None) -> str:
    return "" if row is None else f"row {row}: "


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_value(value: Any, row: int | None, index: int, name: str) -> float:
    """One feature value as a finite float; booleans, strings, null, NaN and Infinity refused."""
    place = f"{'' if row is None else f'row {row}, '}feature {index} ({name})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{place}: {_short(value)} is not a number", row=row, feature=name)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidRequest(
            f"{place}: {_short(value)} is not a finite number (NaN and Infinity are refused)",
            row=row,
            feature=name,
        )
    return number


def parse_features(
    features: Any, feature_order: Sequence[str], row: int | None = None
) -> list[float]:
    """One row, by position (the model's feature order) or by name, as floats in that order."""
    n = len(feature_order)
    expected = ", ".join(feature_order)
    if isinstance(features, list):
        if len(features) != n:
            raise InvalidRequest(
                f"{_where(row)}expected {n} features ({expected}), got {len(features)}", row=row
            )
        return [parse_value(v, row, j, feature_order[j]) for j, v in enumerate(features)]
    if isinstance(features, Mapping):
        unknown = [str(k) for k in features if k not in feature_order]
        if unknown:
            raise InvalidRequest(
                f"{_where(row)}unknown feature name(s) {', '.join(unknown)}; expected {expected}",
                row=row,
                feature=unknown[0],
            )
        missing = [name for name in feature_order if name not in features]
        if missing:
            raise InvalidRequest(
                f"{_where(row)}missing feature(s) {', '.join(missing)}; expected {expected}",
                row=row,
                feature=missing[0],
            )
        return [parse_value(features[name], row, j, name) for j, name in enumerate(feature_order)]
    what = "features" if row is None else f"row {row}"
    raise InvalidRequest(
        f"{what}: expected a list of {n} numbers ({expected}) or an object of feature name to "
        f"number, got {_short(features)}",
        row=row,
    )


def parse_rows(rows: Any, feature_order: Sequence[str], max_rows: int) -> np.ndarray:
    """Many rows (each by position or by name) as an (n_rows, n_features) float array."""
    if not isinstance(rows, list):
        raise InvalidRequest(f"'rows' must be a list of rows, got {_short(rows)}")
    if not rows:
        raise InvalidRequest(f"'rows' is empty; send 1 to {max_rows} rows")
    if len(rows) > max_rows:
        raise InvalidRequest(
            f"{len(rows)} rows in one request; at most {max_rows} (MLP_SERVE_MAX_ROWS): "
            "split the request",
            status_code=413,
        )
    parsed = [parse_features(r, feature_order, row=i) for i, r in enumerate(rows)]
    return np.asarray(parsed, dtype=np.float64).reshape(len(rows), len(feature_order))


def describe_predictions(
    probabilities: np.ndarray, classes: Sequence[Any], label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Label, class index and per-class probabilities of each row; `classes` are the model's
    `classes_` (indexes into label_names), the columns of `probabilities`."""
    indexes = [int(c) for c in classes]
    names = [label_names[i] for i in indexes]
    best = probabilities.argmax(axis=1)
    return [
        {
            "label": names[b],
            "class_index": indexes[b],
            "probabilities": dict(zip(names, (round(float(p), 6) for p in row), strict=True)),
        }
        for b, row in zip(best, probabilities, strict=True)
    ]


def describe_request_errors(errors: Sequence[Mapping[str, Any]]) -> tuple[int, str]:
    """FastAPI's validation errors as one status and message: 400 for a body that is not JSON,
    422 for JSON of the wrong shape."""
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            position = error.get("loc", ("body", "?"))[-1]
            return 400, f"the body is not valid JSON: {reason} at character {position}"
    parts = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        message = str(error.get("msg", "invalid"))
        if isinstance(error.get("input"), bytes):
            message = "send the body as JSON with the header Content-Type: application/json"
        parts.append(f"{'.'.join(loc) or 'body'}: {message}")
    return 422, "; ".join(parts) or "invalid request"


class PredictRequest(BaseModel):
    """One row to predict."""

    model_config = ConfigDict(extra="forbid")
    features: Annotated[Any, WithJsonSchema(FEATURES_SCHEMA)] = Field(
        description="The feature values: a list in the model's feature order (GET /model), "
        "or an object of feature name to value.",
        examples=[[5.1, 3.5, 1.4, 0.2]],
    )


class BulkPredictRequest(BaseModel):
    """Many rows to predict in one request (at most MLP_SERVE_MAX_ROWS)."""

    model_config = ConfigDict(extra="forbid")
    rows: Annotated[list[Any], WithJsonSchema({"type": "array", "items": FEATURES_SCHEMA})] = Field(
        description="Rows, each a list in the model's feature order or an object by name.",
        examples=[[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]],
    )


class Prediction(BaseModel):
    label: str = Field(description="The predicted class name.")
    class_index: int = Field(description="The predicted class's index in label_names.")
    probabilities: dict[str, float] = Field(description="Probability of each class, by name.")


class PredictResponse(Prediction):
    model_version: int = Field(description="The registry version that answered.")


class BulkPredictResponse(BaseModel):
    model_version: int = Field(description="The registry version that answered every row.")
    predictions: list[Prediction] = Field(description="One prediction per row, in order.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_version: int
    pinned: bool = Field(description="True when serving a pinned version, not the champion.")


class ModelInfo(BaseModel):
    version: int
    pinned: bool
    stage: str
    family: str
    params: dict[str, Any]
    feature_order: list[str] = Field(description="The order of positional feature lists.")
    label_names: list[str]
    metrics: dict[str, Any] = Field(description="Holdout metrics recorded at training.")
    training_snapshot_id: int
    training_rows: int
    created_at: datetime
    promoted_at: datetime | None


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong and where.")
    row: int | None = Field(default=None, description="The row at fault (bulk requests).")
    feature: str | None = Field(default=None, description="The feature at fault.")
