"""The model stage of batch inference, in its two modes.

fused: Predictor is a Ray Data callable class in an actor pool; each actor loads the verified
model once. separated: the model runs in a Ray Serve deployment (BatchModel, autoscaling
replicas) and ServePredictor calls it through a deployment handle. Both turn a batch of feature
rows into the same prediction columns (the one prediction record of
`mlplatform.inference.predictions`); a batch that fails or exceeds its timeout marks its rows
with the error instead, unit by unit, so that one bad unit does not fail its neighbours.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray import serve

from mlplatform.connectors.niceness import set_niceness
from mlplatform.dataset.prediction_record import CLASS_INDEX, LABEL, PROBABILITIES, REASON
from mlplatform.inference.batch.unit_files import WriteTarget, write_parts
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS
from mlplatform.inference.features import Ranges, within_float32
from mlplatform.inference.predictions import label_order, prediction_columns
from mlplatform.inference.user_predictor import UserModel
from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelRef
from mlplatform.settings import Settings

# Feature rows -> class probabilities, one column per label in label_names order.
PredictProba = Callable[[np.ndarray], np.ndarray]


def refusals(
    features: np.ndarray, nulls: np.ndarray, order: Sequence[str], ranges: Ranges
) -> pa.Array:
    """Per row, why its features break the dataset's rules (null: they do not), with the Flink
    job's codes and in its order: missing_value, then not_finite, then out_of_range, each for the
    first feature that breaks it."""
    bounds = np.array([within_float32(ranges.get(name)) for name in order]).T
    finite = np.isfinite(features)
    with np.errstate(invalid="ignore"):
        outside = finite & ~((features >= bounds[0]) & (features <= bounds[1]))
    phases = (("missing_value", nulls), ("not_finite", ~nulls & ~finite), ("out_of_range", outside))
    reason = np.full(len(features), None, dtype=object)
    for code, broken in reversed(phases):  # the earlier phase, then the earlier feature, wins
        for i in reversed(range(len(order))):
            reason[broken[:, i]] = f"{code}:{order[i]}"
    return pa.array(reason, pa.string())


def feature_matrix(batch: pa.Table, order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The batch's features as one float64 array in `order` (null: NaN), and where the nulls are."""
    features = np.empty((batch.num_rows, len(order)), dtype=np.float64)
    nulls = np.zeros(features.shape, dtype=bool)
    for i, name in enumerate(order):
        column = batch[name]
        if column.null_count:
            nulls[:, i] = pc.is_null(column).to_numpy(zero_copy_only=False)
            column = pc.fill_null(column.cast(pa.float64()), np.nan)
        features[:, i] = column.to_numpy()
    return features, nulls


def unit_by_unit(
    batch: pa.Table, todo: np.ndarray, step: Callable[[np.ndarray], None], what: str
) -> pa.ChunkedArray:
    """After `step` failed on the batch's `todo` rows: `step` on each unit's rows alone; the
    batch's error column with the rows of each unit that fails alone marked with its error."""
    units, failed = batch[UNIT].to_numpy(), np.full(batch.num_rows, "", dtype=object)
    for unit in np.unique(units[todo]):
        rows = todo & (units == unit)
        try:
            step(rows)
        except Exception as error:
            failed[rows] = f"{what} failed: {error!r}"[:2000]
    errors = batch[ERROR]
    return pc.if_else(pc.equal(errors, ""), pa.array(failed, pa.string()), errors)


def predict_table(
    batch: pa.Table, ref: ModelRef, key: str, predict: PredictProba, ranges: Ranges | None = None
) -> pa.Table:
    """Prediction columns for the batch's rows (Arrow in and out, no per-row Python); a row whose
    features break the dataset's rules gets the reason instead of a prediction, and rows of a
    unit whose prediction failed get the error. Placeholder rows (null key) and rows that arrived
    with an error pass through (with class 0's columns, never written)."""
    n, n_classes = batch.num_rows, len(ref.label_names)
    errors = batch[ERROR]
    features, nulls = feature_matrix(batch, ref.feature_order)
    if REASON in batch.column_names:  # refused by the preprocessing stage already
        reason = batch[REASON].combine_chunks()
    else:
        reason = refusals(features, nulls, ref.feature_order, ranges or {})
    todo = pc.and_(pc.is_valid(batch[key]), pc.equal(errors, ""))
    todo = pc.and_(todo, pc.is_null(reason)).to_numpy(zero_copy_only=False)
    probabilities = np.zeros((n, n_classes), dtype=np.float64)
    everything = bool(todo.all())
    try:
        if everything:
            probabilities[:] = predict(features)
        elif todo.any():
            probabilities[todo] = predict(features[todo])
    except Exception:  # find the units that fail, one unit at a time

        def predict_rows(rows: np.ndarray) -> None:
            probabilities[rows] = predict(features[rows])

        errors = unit_by_unit(batch, todo, predict_rows, "predict")
    columns = prediction_columns(probabilities, ref.label_names, ref.version)
    if reason.null_count < n:  # refused rows: no class, label or probabilities
        refused = pc.is_valid(reason)
        for name in (CLASS_INDEX, LABEL, PROBABILITIES):
            columns[name] = pc.if_else(refused, pa.nulls(n, columns[name].type), columns[name])
    return pa.table(
        {
            UNIT: batch[UNIT],
            UNIT_ROWS: batch[UNIT_ROWS],
            key: batch[key],
            ERROR: errors,
            **columns,
            REASON: reason,
        }
    )


class Predictor:
    """fused mode: the model in the Ray Data actor, loaded and verified once per actor; each
    batch's predictions are written as data files here (unit_files.write_parts)."""

    def __init__(
        self,
        ref: ModelRef,
        key: str,
        timeout_s: float,
        target: WriteTarget,
        loader: Callable[[ModelRef], Any] | None = None,
        niceness: int | None = None,
        ranges: Ranges | None = None,
    ) -> None:
        if niceness is not None:  # this actor's process is the model's alone
            set_niceness(niceness)
        self.ref, self.key, self.timeout_s, self.ranges = ref, key, timeout_s, ranges
        self.target = target
        self.model = (loader or model_registry.load_model)(ref)
        self._pool = concurrent.futures.ThreadPoolExecutor(1)

    def _predict(self, features: np.ndarray) -> np.ndarray:
        future = self._pool.submit(self.model.predict_proba, features)
        try:
            probabilities = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError as error:
            # The stuck call cannot be interrupted; later batches get a fresh thread.
            self._pool = concurrent.futures.ThreadPoolExecutor(1)
            message = f"batch of {len(features)} rows took over {self.timeout_s} s"
            raise TimeoutError(message) from error
        return label_order(probabilities, self.model.classes_, len(self.ref.label_names))

    def __call__(self, batch: pa.Table) -> pa.Table:
        predicted = predict_table(batch, self.ref, self.key, self._predict, self.ranges)
        return write_parts(predicted, self.target)


class PreprocessStage:
    """Batch inference's preprocessing stage: the user's preprocessor over the rows to predict
    (valid keys, no error, within the dataset's rules), in CPU actors before the model stage.
    Refused rows get their reason here, from the features as they arrived."""

    def __init__(self, ref: ModelRef, key: str, s: Settings) -> None:
        self.ref, self.key, self.ranges = ref, key, s.dataset_spec.ranges
        self.model = UserModel(ref, None, s.preprocessor_class, s.predictor_options, s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        features, nulls = feature_matrix(batch, self.ref.feature_order)
        reason = refusals(features, nulls, self.ref.feature_order, self.ranges)
        errors = batch[ERROR]
        todo = pc.and_(pc.is_valid(batch[self.key]), pc.equal(errors, ""))
        todo = pc.and_(todo, pc.is_null(reason)).to_numpy(zero_copy_only=False)
        try:
            if todo.any():
                features[todo] = self.model.preprocessed(features[todo])
        except Exception:  # the units that fail get the error, one unit at a time

            def preprocess_rows(rows: np.ndarray) -> None:
                features[rows] = self.model.preprocessed(features[rows])

            errors = unit_by_unit(batch, todo, preprocess_rows, "preprocess")
            batch = batch.set_column(batch.schema.get_field_index(ERROR), ERROR, errors)
        for i, name in enumerate(self.ref.feature_order):
            column = pa.array(features[:, i], pa.float64())
            batch = batch.set_column(batch.schema.get_field_index(name), name, column)
        return batch.append_column(REASON, reason)


@serve.deployment
class BatchModel:
    """separated mode: one pinned model version behind a deployment handle (no HTTP route)."""

    def __init__(
        self,
        ref: ModelRef,
        niceness: int | None = None,
        loader: Callable[[ModelRef], Any] | None = None,
    ) -> None:
        if niceness is not None:
            set_niceness(niceness)
        self.model = (loader or model_registry.load_model)(ref)
        self.n_labels = len(ref.label_names)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities in label_names order."""
        probabilities = self.model.predict_proba(features)
        return label_order(probabilities, self.model.classes_, self.n_labels)


def batch_app_name(s: Settings, ref: ModelRef) -> str:
    """Versions of different registries share numbers; their artifacts' digests differ."""
    return f"{s.serve_app_name}-batch-v{ref.version}-{ref.sha256[:8]}"


def deploy_batch_model(
    s: Settings, ref: ModelRef, loader: Callable[[ModelRef], Any] | None = None
) -> str:
    """Deploy (or keep) the model version's autoscaling Serve application; its name. `loader`
    makes the model of the version (default: the registry's estimator)."""
    name = batch_app_name(s, ref)
    deployment = BatchModel.options(
        autoscaling_config={
            "min_replicas": s.serve_min_replicas,
            "max_replicas": s.serve_max_replicas,
            "target_ongoing_requests": 2,
        },
        ray_actor_options={"num_cpus": s.serve_replica_cpus, "num_gpus": s.serve_replica_gpus},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": s.serve_port})
    serve.run(deployment.bind(ref, s.batch_niceness, loader), name=name, route_prefix=None)
    return name


@contextmanager
def serving_batch_model(
    s: Settings, ref: ModelRef, loader: Callable[[ModelRef], Any] | None = None
) -> Iterator[str]:
    """The model's Serve application for the duration of a run; deleted afterwards."""
    name = deploy_batch_model(s, ref, loader)
    try:
        yield name
    finally:
        serve.delete(name, _blocking=False)


class ServePredictor:
    """separated mode: a light Ray Data actor that sends each batch's features to the Serve
    deployment and writes the predictions as data files (unit_files.write_parts)."""

    def __init__(
        self,
        ref: ModelRef,
        key: str,
        timeout_s: float,
        target: WriteTarget,
        app_name: str,
        niceness: int | None = None,
        ranges: Ranges | None = None,
    ) -> None:
        if niceness is not None:
            set_niceness(niceness)
        self.ref, self.key, self.timeout_s, self.ranges = ref, key, timeout_s, ranges
        self.target = target
        self.handle = serve.get_deployment_handle("BatchModel", app_name)

    def _predict(self, features: np.ndarray) -> np.ndarray:
        return self.handle.predict_proba.remote(features).result(timeout_s=self.timeout_s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        predicted = predict_table(batch, self.ref, self.key, self._predict, self.ranges)
        return write_parts(predicted, self.target)
