"""A predictor of your own: the average of several versions of the registry's model.

    MLP_PREDICTOR_CLASS=examples/predictors/ensemble.py:Ensemble
    MLP_PREDICTOR_OPTIONS='{"versions": [3, 5]}'

The run's model version (the champion, or the version a run pins) always takes part; the
versions in the options join it, each weighted equally. Every version is loaded from the
registry and verified against its SHA-256 (`context.load_model`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Ensemble:
    def __init__(self, context: Any) -> None:
        versions = [context.model_version, *context.options.get("versions", [])]
        self.models = [context.load_model(v) for v in dict.fromkeys(versions)]
        self.order, self.n_labels = context.feature_order, len(context.label_names)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.column_stack([batch[name] for name in self.order])
        total = np.zeros((len(x), self.n_labels))
        for model in self.models:
            # predict_proba's columns are the model's classes_ (label indexes), in label order
            # here: a model trained without some class gives it probability 0.
            total[:, model.classes_] += model.predict_proba(x)
        return {**batch, "probabilities": total / len(self.models)}
