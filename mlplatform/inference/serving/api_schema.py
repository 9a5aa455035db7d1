"""The serving API's request and response models, and the plain functions that shape them.

Rows arrive as lists in the model's feature order or as objects of feature name -> number, and
are read by the one feature parser (`mlplatform.inference.features`, the stream's too): every
refusal says what was wrong and where ("row 3, feature 1 (sepal_width): ..."). Answers are the
one prediction record (`mlplatform.inference.predictions`) with the probabilities by class name.
The checks are plain functions (unit-tested without Ray); the models only describe the shapes
for the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from mlplatform.dataset.prediction_record import CLASS_INDEX, LABEL, PROBABILITIES
from mlplatform.inference.features import InvalidFeatures, Ranges, parse_features, short
from mlplatform.inference.predictions import class_indexes, label_order

FEATURES_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "array", "items": {"type": "number"}, "title": "In the model's feature order"},
        {"type": "object", "additionalProperties": {"type": "number"}, "title": "By name"},
    ]
}


def http_status(error: InvalidFeatures) -> int:
    """413 for more rows than allowed, 422 for any other refusal."""
    return 413 if error.code == "too_many_rows" else 422


def parse_rows(
    rows: Any, feature_order: Sequence[str], max_rows: int, ranges: Ranges | None = None
) -> np.ndarray:
    """Many rows (each by position or by name) as an (n_rows, n_features) float array."""
    if not isinstance(rows, list):
        message = f"'rows' must be a list of rows, got {short(rows)}"
        raise InvalidFeatures("not_a_list", f"a {type(rows).__name__}", message)
    if not rows:
        raise InvalidFeatures("no_rows", "0", f"'rows' is empty; send 1 to {max_rows} rows")
    if len(rows) > max_rows:
        raise InvalidFeatures(
            "too_many_rows",
            f"{len(rows)} of at most {max_rows}",
            f"{len(rows)} rows in one request; at most {max_rows} (MLP_SERVE_MAX_ROWS): "
            "split the request",
        )
    parsed = [parse_features(r, feature_order, row=i, ranges=ranges) for i, r in enumerate(rows)]
    return np.asarray(parsed, dtype=np.float64).reshape(len(rows), len(feature_order))


def describe_predictions(
    probabilities: np.ndarray, classes: Sequence[Any], label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Label, class index and the probability of each class by name (in label_names order),
    of each row; `classes` are the model's `classes_`, the columns of `probabilities`."""
    ordered = label_order(probabilities, classes, len(label_names))
    return [
        {
            LABEL: label_names[best],
            CLASS_INDEX: best,
            PROBABILITIES: dict(zip(label_names, (round(p, 6) for p in row), strict=True)),
        }
        for best, row in zip(class_indexes(ordered).tolist(), ordered.tolist(), strict=True)
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
    probabilities: dict[str, float] = Field(
        description="Probability of each class by name, in label_names order."
    )


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

    @field_validator("created_at", "promoted_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        """The registry keeps UTC times without their zone (SQLite drops it): say it, so the
        answer is an RFC 3339 date-time as the schema promises."""
        return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong and where.")
    row: int | None = Field(default=None, description="The row at fault (bulk requests).")
    feature: str | None = Field(default=None, description="The feature at fault.")
