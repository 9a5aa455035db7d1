"""Settings of a user predictor: a class of the user's own in place of the registry's estimator,
in batch, stream and serving (the contract: mlplatform/inference/user_predictor.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictorSettings(BaseModel):
    """Which user classes predict, with which options, on how much of a node."""

    # "package.module:Class" or "path/to/file.py:Class". The model stage: `__init__(context)`
    # loads, `__call__(batch)` returns the batch with its "probabilities". None: the registry's
    # estimator predicts.
    predictor_class: str | None = None
    # The same convention, for a preprocessing stage before the model (scaling, imputing, unit
    # conversion: the feature columns in, the same columns out). In batch inference it runs in
    # actors of its own on CPUs, so a model stage on GPUs (actor_num_gpus) only predicts.
    preprocessor_class: str | None = None
    # Given to both classes as `context.options` (JSON in MLP_PREDICTOR_OPTIONS).
    predictor_options: dict[str, Any] = Field(default_factory=dict)
    # CPUs of each preprocessing actor of batch inference.
    preprocessor_num_cpus: float = Field(default=0.25, gt=0)
