"""Models in ONNX: a classifier exported from any framework (skl2onnx, PyTorch, ...), run by
ONNX Runtime on the CPU.

The registry keeps the `.onnx` file as the version's artifact (its SHA-256 checked before every
load, as any artifact's); `OnnxModel` gives it the face the platform predicts with:
`predict_proba` (rows x classes), `predict`, `classes_` and `n_features_in_`. The graph takes one
2-D float input (float32 or float64: the features, in the model's order) and gives the class
probabilities as a tensor (rows x classes: the classes are its column indexes) or as ONNX-ML's
ZipMap (a map per row from class to probability: the classes are its keys; slower, a Python
dict per row). An ONNX file holds no code: ONNX Runtime runs the standard operator sets only,
and a graph that needs custom operators (native code) does not load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


class OnnxModelError(ValueError):
    """The file is not an ONNX classifier the platform can feed: what is wrong with it."""


class OnnxModel:
    """An ONNX classifier with the estimator methods the platform calls."""

    def __init__(self, data: bytes, what: str = "the ONNX model") -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread: the model runs in Ray workers that are each given their share of a node.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                data, options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise OnnxModelError(f"{what} does not load as an ONNX model: {error}") from error
        self.data, self.what = data, what
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type not in INPUT_TYPES or len(inputs[0].shape) != 2:
            found = [(i.name, i.type, i.shape) for i in inputs]
            raise OnnxModelError(
                f"{what} takes {found}; the platform feeds one 2-D float tensor (rows x "
                "features): export it with a single float input"
            )
        self.input_name, self.dtype = inputs[0].name, INPUT_TYPES[inputs[0].type]
        width = inputs[0].shape[1]
        if not isinstance(width, int):
            raise OnnxModelError(f"{what}'s input has no fixed feature count ({width!r})")
        self.n_features_in_ = width
        self.output_name, self.zipmap = self._probability_output()
        self.producer = self.session.get_modelmeta().producer_name or "unknown"
        self.classes_ = self._classes()

    def _probability_output(self) -> tuple[str, bool]:
        """The output with the probabilities, and whether it is a ZipMap."""
        outputs = self.session.get_outputs()
        for output in outputs:
            if output.type.startswith("seq(map("):
                return output.name, True
        tensors = [o for o in outputs if o.type.startswith("tensor(") and len(o.shape) == 2]
        named = [o for o in tensors if "prob" in o.name.lower()]
        if named or tensors:
            return (named or tensors)[-1].name, False
        found = [(o.name, o.type) for o in outputs]
        raise OnnxModelError(f"{self.what} has no probability output (rows x classes): {found}")

    def _classes(self) -> np.ndarray:
        """The ZipMap's keys, or the tensor's column indexes (from one row of zeros)."""
        zeros = np.zeros((1, self.n_features_in_), dtype=self.dtype)
        first = self.session.run([self.output_name], {self.input_name: zeros})[0][0]
        if self.zipmap:
            return np.array(sorted(first), dtype=np.int64)
        return np.arange(len(first))

    def predict_proba(self, x: Any) -> np.ndarray:
        rows = np.ascontiguousarray(x, dtype=self.dtype)
        found = self.session.run([self.output_name], {self.input_name: rows})[0]
        if self.zipmap:
            return np.array([[row[c] for c in self.classes_] for row in found], dtype=np.float64)
        return np.asarray(found, dtype=np.float64)

    def predict(self, x: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]
