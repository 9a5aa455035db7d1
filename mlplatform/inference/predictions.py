"""Predictions computed the same way for batch, stream and online serving (the record's fields:
mlplatform.dataset.prediction_record).

A model's `predict_proba` has one column per entry of its `classes_` (indexes into label_names):
a model trained without some class has fewer columns than there are labels. `label_order` puts
them in label_names order (an unseen class has probability 0) before anything else reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mlplatform.dataset.prediction_record import CLASS_INDEX, LABEL, MODEL_VERSION, PROBABILITIES


def label_order(probabilities: np.ndarray, classes: Any, n_labels: int) -> np.ndarray:
    """`predict_proba`'s columns (one per entry of the model's `classes_`) as one column per
    label, in label_names order; None for `classes`: the columns are in that order already."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    indexes = np.arange(n_labels) if classes is None else np.asarray(classes).astype(np.intp)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(indexes):
        raise ValueError(
            f"the model gave {probabilities.shape[-1]} probabilities a row for its "
            f"{len(indexes)} classes"
        )
    if len(indexes) == n_labels and (indexes == np.arange(n_labels)).all():
        return probabilities
    if len(indexes) and (indexes.min() < 0 or indexes.max() >= n_labels):
        raise ValueError(
            f"the model's classes {indexes.tolist()} are not all indexes into its {n_labels} "
            "label names: retrain it on the dataset's label column"
        )
    ordered = np.zeros((len(probabilities), n_labels), dtype=np.float64)
    ordered[:, indexes] = probabilities
    return ordered


def class_indexes(probabilities: np.ndarray) -> np.ndarray:
    """The most probable class of each row of label-ordered probabilities (the first on a tie)."""
    return probabilities.argmax(axis=1).astype(np.int32)


@dataclass(frozen=True)
class Prediction:
    """One row's prediction, for the row-wise paths (stream messages, HTTP answers)."""

    class_index: int
    label: str
    probabilities: tuple[float, ...]  # in label_names order
    model_version: int

    def record(self, key_column: str, key: str) -> dict[str, Any]:
        """The prediction as a JSON object of the predictions topic (the stream adds its own)."""
        return {
            key_column: key,
            CLASS_INDEX: self.class_index,
            LABEL: self.label,
            PROBABILITIES: list(self.probabilities),
            MODEL_VERSION: self.model_version,
        }


def predictions(
    probabilities: np.ndarray, classes: Any, label_names: Sequence[str], model_version: int
) -> list[Prediction]:
    """One Prediction per row of `predict_proba` output (columns: the model's `classes_`)."""
    ordered = label_order(probabilities, classes, len(label_names))
    return [
        Prediction(best, label_names[best], tuple(row), model_version)
        for best, row in zip(class_indexes(ordered).tolist(), ordered.tolist(), strict=True)
    ]


def prediction_columns(
    probabilities: np.ndarray, label_names: Sequence[str], model_version: int
) -> dict[str, pa.Array]:
    """class_index, label, probabilities and model_version columns of label-ordered
    probabilities, computed column-wise (no per-row Python)."""
    n, n_labels = probabilities.shape
    best = class_indexes(probabilities)
    return {
        CLASS_INDEX: pa.array(best, pa.int32()),
        LABEL: pa.array(list(label_names), pa.string()).take(pa.array(best)),
        PROBABILITIES: pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(probabilities).ravel()), n_labels
        ).cast(pa.list_(pa.float64())),
        MODEL_VERSION: pa.repeat(pa.scalar(model_version, pa.int32()), n),
    }
