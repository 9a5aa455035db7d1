"""A predictor of the user's own in place of the registry's estimator: batch, stream and serving.

The contract is Ray Data's callable class, for models that are not one estimator (ensembles,
pre- or post-processing, a model that computes on a GPU):

    class MyPredictor:
        def __init__(self, context: PredictorContext) -> None:  # loads, once per worker
            self.model = context.load_model()  # the registry version, verified (or anything)
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # batch: one float64 array per feature column (context.feature_order)
            return {**batch, "probabilities": ...}  # (rows, labels), in context.label_names order

A preprocessor class (settings: preprocessor_class) follows the same convention and returns the
feature columns, changed. Rows that break the dataset's rules never reach either class (they are
refused with a reason first), and every path makes the same prediction record of the
probabilities (mlplatform.inference.predictions). `UserModel` presents the two classes to the
paths as a model with `predict_proba`, already in label order (`classes_` is None); in batch
inference the preprocessor runs in actors of its own (batch.predictors.PreprocessStage), on
CPUs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mlplatform.dataset.prediction_record import PROBABILITIES
from mlplatform.inference.predictions import label_order
from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import PROJECT_DIR, Settings


@dataclass(frozen=True)
class PredictorContext:
    """What a user class gets: the model version the run predicts with, and its options."""

    ref: ModelRef
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: Settings | None = None

    @property
    def model_version(self) -> int:
        return self.ref.version

    @property
    def feature_order(self) -> list[str]:
        return list(self.ref.feature_order)

    @property
    def label_names(self) -> list[str]:
        return list(self.ref.label_names)

    def load_model(self, version: int | None = None) -> Any:
        """The registry's model: this version, or another `version` of the same model (its
        artifact verified against its SHA-256 either way)."""
        if version is None or version == self.ref.version:
            return model_registry.load_model(self.ref)
        if self.settings is None:
            raise LookupError("no registry to load other versions from")
        row = model_registry.get_version(self.settings, version)
        return model_registry.load_model(model_registry.model_ref(row))


def import_file(file: Path, module_name: str) -> ModuleType:
    """A user's Python file as the module `module_name` (registered, so that pickling finds its
    classes), with its folder on the import path while it loads, so it may import neighbours."""
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[module_name] = module
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.path.remove(folder)
    return module


def load_class(path: str) -> type:
    """The class "package.module:Class" or "path/to/file.py:Class" (relative to the project)."""
    where, _, name = path.rpartition(":")
    if not where or not name:
        raise ValueError(f"{path!r}: name a class as 'package.module:Class' or 'file.py:Class'")
    if where.endswith(".py"):
        file = Path(where) if Path(where).is_absolute() else PROJECT_DIR / where
        if not file.is_file():
            raise FileNotFoundError(f"{path!r}: {file} does not exist")
        module = import_file(file, f"user_predictor_{file.stem}")
    else:
        module = importlib.import_module(where)
    found = getattr(module, name, None)
    if not isinstance(found, type):
        defined = sorted(n for n, v in vars(module).items() if isinstance(v, type))
        raise AttributeError(f"{path!r}: no class {name!r} there (classes: {', '.join(defined)})")
    return found


def _columns(batch: Any, rows: int, names: list[str], what: str) -> np.ndarray:
    """The named columns of a user class's answer, as one float64 array (rows x names)."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{what} returned {type(batch).__name__}, not a dict of columns")
    missing = [n for n in names if n not in batch]
    if missing:
        raise KeyError(f"{what} returned no column {', '.join(missing)}")
    x = np.column_stack([np.asarray(batch[n], dtype=np.float64) for n in names])
    if x.shape[0] != rows:
        raise ValueError(f"{what} returned {x.shape[0]} rows for {rows}")
    return x


class UserModel:
    """The user's preprocessor and predictor (either may be absent: the registry's estimator
    predicts) as a model with `predict_proba` in label order."""

    classes_ = None  # the probabilities come in label order

    def __init__(
        self,
        ref: ModelRef,
        predictor_class: str | None,
        preprocessor_class: str | None = None,
        options: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
    ) -> None:
        context = PredictorContext(ref, dict(options or {}), settings)
        self.ref = ref
        self.preprocess = load_class(preprocessor_class)(context) if preprocessor_class else None
        self.predict = load_class(predictor_class)(context) if predictor_class else None
        self.estimator: Any = None  # the registry's, loaded when it is to predict

    def preprocessed(self, x: np.ndarray) -> np.ndarray:
        """The feature rows after the preprocessor (as they are without one)."""
        if self.preprocess is None:
            return x
        answer = self.preprocess(self._columns_of(x))
        return _columns(answer, len(x), self.ref.feature_order, "the preprocessor")

    def _columns_of(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Feature rows as the user classes take them: one array per feature column."""
        return {name: x[:, i] for i, name in enumerate(self.ref.feature_order)}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x, n_labels = self.preprocessed(np.asarray(x, dtype=np.float64)), len(self.ref.label_names)
        if self.predict is None:
            if self.estimator is None:
                self.estimator = model_registry.load_model(self.ref)
            found = self.estimator.predict_proba(x)
            return label_order(found, self.estimator.classes_, n_labels)
        answer = self.predict(self._columns_of(x))
        if not isinstance(answer, Mapping) or PROBABILITIES not in answer:
            raise KeyError(f"the predictor returned no {PROBABILITIES!r} column")
        probabilities = np.asarray(answer[PROBABILITIES], dtype=np.float64)
        if probabilities.shape != (len(x), n_labels):
            raise ValueError(
                f"the predictor returned probabilities of shape {probabilities.shape}; "
                f"expected ({len(x)}, {n_labels}): one column per label, in label_names order"
            )
        return probabilities


def model_loader(
    s: Settings, default: Callable[[ModelRef], Any], preprocess: bool = True
) -> Callable[[ModelRef], Any]:
    """How a worker turns a model version into the model it predicts with: `default` (the
    registry's estimator), or the user's classes as a UserModel (without the preprocessor when
    a stage of its own runs it: `preprocess` False)."""
    preprocessor = s.preprocessor_class if preprocess else None
    if not (s.predictor_class or preprocessor):
        return default
    return partial(
        UserModel,
        predictor_class=s.predictor_class,
        preprocessor_class=preprocessor,
        options=s.predictor_options,
        settings=s,
    )
