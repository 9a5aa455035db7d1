"""A scikit-learn pipeline (StandardScaler -> LogisticRegression) run as two stages: the scaler
as the preprocessing stage, on CPUs, and the linear model as the model stage, on a GPU when the
stage has one (PyTorch or CuPy, whichever is installed), else with numpy.

    MLP_PREPROCESSOR_CLASS=examples/predictors/split_pipeline.py:Scale
    MLP_PREDICTOR_CLASS=examples/predictors/split_pipeline.py:LinearModel
    MLP_ACTOR_NUM_GPUS=1                      # batch inference's model stage
    MLP_PREDICTOR_OPTIONS='{"device": "gpu"}'  # refuse to start without one ("cpu": numpy)

The registry's model is such a pipeline (for example one registered with `mlp models register`).
Both stages read their halves from the same verified version, so the two stages predict what
the pipeline's own `predict_proba` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _halves(context: Any) -> tuple[Any, Any]:
    pipeline = context.load_model()
    steps = [step for _, step in getattr(pipeline, "steps", [])]
    if len(steps) != 2 or not hasattr(steps[0], "mean_") or not hasattr(steps[1], "coef_"):
        raise TypeError("split_pipeline needs a model made of a StandardScaler and a linear model")
    return steps[0], steps[1]


class Scale:
    """The preprocessing stage: the pipeline's scaler."""

    def __init__(self, context: Any) -> None:
        scaler, _ = _halves(context)
        self.order, self.mean, self.scale = context.feature_order, scaler.mean_, scaler.scale_

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: (batch[name] - self.mean[i]) / self.scale[i] for i, name in enumerate(self.order)
        }


def _device_backend(wanted: str) -> tuple[str, Any]:
    """("torch", torch) or ("cupy", cupy) when a GPU is there to use (and `wanted` is not
    "cpu"), else ("numpy", numpy)."""
    if wanted == "cpu":
        return "numpy", np
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", torch
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy", cupy
    except Exception:  # noqa: BLE001 - not installed, or no driver: no GPU here
        pass
    if wanted == "gpu":
        raise RuntimeError("this stage was asked to run on a GPU and finds none (PyTorch, CuPy)")
    return "numpy", np


class LinearModel:
    """The model stage: the pipeline's linear model, as matrix products on the stage's device."""

    def __init__(self, context: Any) -> None:
        _, linear = _halves(context)
        self.backend, self.xp = _device_backend(context.options.get("device", "any"))
        self.order, self.classes = context.feature_order, np.asarray(linear.classes_)
        self.n_labels = len(context.label_names)
        self.coef = self._on_device(np.asarray(linear.coef_, dtype=np.float64).T)
        self.intercept = self._on_device(np.asarray(linear.intercept_, dtype=np.float64))

    def _on_device(self, a: np.ndarray) -> Any:
        if self.backend == "torch":
            return self.xp.as_tensor(a, device="cuda")
        return self.xp.asarray(a)

    def _to_numpy(self, a: Any) -> np.ndarray:
        if self.backend == "torch":
            return a.cpu().numpy()
        return a.get() if self.backend == "cupy" else a

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self._on_device(np.column_stack([batch[name] for name in self.order]))
        logits = x @ self.coef + self.intercept
        if logits.shape[1] == 1:  # two classes: one logit, the second class's
            logits = self.xp.concatenate([0 * logits, logits], 1)
        if self.backend == "torch":
            found = self.xp.softmax(logits, 1)
        else:
            shifted = self.xp.exp(logits - logits.max(1, keepdims=True))
            found = shifted / shifted.sum(1, keepdims=True)
        found = self._to_numpy(found)
        probabilities = np.zeros((len(found), self.n_labels))
        probabilities[:, self.classes] = found
        return {**batch, "probabilities": probabilities}
