"""A predictor that takes its time (MLP_PREDICTOR_CLASS=tests/e2e/slow_predictor.py:Slow): the
registry's model, after `sleep_s` per micro-batch, for tests of a consumer that lags behind."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class Slow:
    def __init__(self, context: Any) -> None:
        self.model, self.order = context.load_model(), context.feature_order
        self.sleep_s = float(context.options.get("sleep_s", 0.05))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.sleep_s)
        x = np.column_stack([batch[name] for name in self.order])
        return {**batch, "probabilities": self.model.predict_proba(x)}
