"""The model's work in batch inference, in both modes: predict_table (a batch's features ->
the prediction columns of the one prediction record, `mlplatform.inference.predictions`) and
run_units (a unit read, predicted and written as data files, unit_files), which a fused pool
actor (model_pool) runs beside its model, and separated mode's unit stage with the model behind
Serve (ServeClient). With a user preprocessor, ModelStage: light Ray Data actors that send each
batch's features to the warm pool and write the predictions. A batch that fails or exceeds its
timeout marks its rows with the error instead, unit by unit, so that one bad unit does not fail
its neighbours.

What a model-stage actor imports at its start, once per run: no scikit-learn, no Ray Serve until
a separated run calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplatform.connectors.niceness import set_niceness
from mlplatform.dataset.prediction_record import CLASS_INDEX, LABEL, PROBABILITIES, REASON
from mlplatform.inference.batch.unit_files import WriteTarget, write_parts
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS, read_unit_or_error
from mlplatform.inference.features import Ranges, within_float32
from mlplatform.inference.predictions import prediction_columns
from mlplatform.registry.model_ref import ModelRef

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


@dataclass(frozen=True)
class UnitWork:
    """What a unit's work needs besides its model: how to read it (read_unit_or_error's
    columns, key first, row_filter and schema_json), the model's rows per call, where to write."""

    ref: ModelRef
    key: str
    target: WriteTarget
    read_kwargs: dict
    batch_size: int
    ranges: Ranges | None = None


def run_units(specs: list[dict], work: UnitWork, predict: PredictProba) -> pa.Table:
    """Each unit's whole work in this process: read, predicted batch_size rows at a time, its
    predictions written as data files; one metadata row per unit (write_parts). A unit that
    cannot be read, or whose prediction fails, is an error row."""
    parts = []
    for spec in specs:
        rows = read_unit_or_error(spec, **work.read_kwargs)
        predicted = pa.concat_tables(
            predict_table(rows.slice(i, work.batch_size), work.ref, work.key, predict, work.ranges)
            for i in range(0, rows.num_rows, work.batch_size)
        )
        parts.append(write_parts(predicted, work.target))
    return pa.concat_tables(parts)


class ModelStage:
    """The model stage's Ray Data actor: each batch's features to the pool (`client`:
    model_pool.PoolClient or ServeClient), its prediction rows built and written."""

    def __init__(
        self,
        ref: ModelRef,
        key: str,
        target: WriteTarget,
        client: PredictProba,
        niceness: int | None = None,
        ranges: Ranges | None = None,
    ) -> None:
        if niceness is not None:
            set_niceness(niceness)
        self.ref, self.key, self.target, self.client, self.ranges = ref, key, target, client, ranges

    def __call__(self, batch: pa.Table) -> pa.Table:
        predicted = predict_table(batch, self.ref, self.key, self.client, self.ranges)
        return write_parts(predicted, self.target)


class ServeClient:
    """separated mode's pool client: a batch's features to the version's Serve application."""

    def __init__(self, app_name: str, timeout_s: float) -> None:
        self.app_name, self.timeout_s = app_name, timeout_s
        self.handle: Any = None
        self.work: UnitWork | None = None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        if self.handle is None:
            from ray import serve  # a second of imports: only where a run is separated

            self.handle = serve.get_deployment_handle("BatchModel", self.app_name)
        return self.handle.predict_proba.remote(features).result(timeout_s=self.timeout_s)

    def run_units(self, specs: list[dict], work: Any) -> pa.Table:
        """The units read, predicted (through Serve) and written in this process; `work` is
        the run's UnitWork in the object store."""
        if self.work is None:
            import ray

            self.work = ray.get(work)
        return run_units(specs, self.work, self)
