"""Batch inference: Ray Data over a pinned Iceberg snapshot, predictions back into Iceberg.

read_iceberg(snapshot) -> drop keys already predicted by this run -> map_batches(Predictor,
actor pool) -> the driver appends every `commit_every_rows` rows to the predictions table in one
Iceberg commit, then records the unit in the checkpoint store (protocol: checkpoints.store).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from pyiceberg.expressions import EqualTo

from checkpoints.store import CheckpointStore
from mlplatform import model_registry
from mlplatform.iceberg_tables import catalog_properties, ensure_tables, load_table
from mlplatform.model_registry import ModelRef
from mlplatform.ray_runtime import connect
from mlplatform.settings import Settings

KIND = "batch-inference"


@dataclass(frozen=True)
class BatchResult:
    run_id: str
    resumed: bool
    snapshot_id: int
    model_version: int
    input_rows: int
    skipped_rows: int
    predicted_rows: int
    units_committed: int
    seconds: float


class Predictor:
    """Ray Data callable class: loads the verified model once per actor, predicts per batch."""

    def __init__(
        self, ref: ModelRef, key: str, loader: Callable[[ModelRef], Any] | None = None
    ) -> None:
        self.ref, self.key = ref, key
        self.model = (loader or model_registry.load_model)(ref)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        features = batch[list(self.ref.feature_order)].to_numpy(dtype=np.float64)
        probabilities = self.model.predict_proba(features)
        return pd.DataFrame(
            {
                self.key: batch[self.key].to_numpy(),
                "prediction": probabilities.argmax(axis=1).astype(np.int32),
                "probabilities": list(probabilities.astype(np.float64)),
                "model_version": np.full(len(batch), self.ref.version, dtype=np.int32),
            }
        )


def _drop_done(batch: pd.DataFrame, key: str, done: frozenset[str]) -> pd.DataFrame:
    return batch[~batch[key].isin(done)] if done else batch


def predicted_keys(s: Settings, run_id: str) -> frozenset[str]:
    """Keys that already have a prediction from this run, read from Iceberg (the truth)."""
    table = load_table(s, s.predictions_table)
    scan = table.scan(row_filter=EqualTo("run_id", run_id), selected_fields=(s.key_column,))
    return frozenset(scan.to_arrow().column(s.key_column).to_pylist())


def prediction_batches(
    s: Settings, ref: ModelRef, snapshot_id: int, done: frozenset[str]
) -> Iterator[pd.DataFrame]:
    """The streaming Ray Data pipeline; yields prediction frames of commit_every_rows rows."""
    dataset = ray.data.read_iceberg(
        table_identifier=s.table_id(s.features_table),
        catalog_kwargs={"name": s.catalog_name, **catalog_properties(s)},
        snapshot_id=snapshot_id,
        selected_fields=(s.key_column, *ref.feature_order),
    )
    predictions = dataset.map_batches(
        _drop_done, fn_kwargs={"key": s.key_column, "done": done}, batch_format="pandas"
    ).map_batches(
        Predictor,
        fn_constructor_kwargs={"ref": ref, "key": s.key_column},
        batch_format="pandas",
        batch_size=s.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=s.actor_pool_min, max_size=s.actor_pool_max),
        num_cpus=s.actor_num_cpus,
    )
    yield from predictions.iter_batches(batch_size=s.commit_every_rows, batch_format="pandas")


def _to_arrow(frame: pd.DataFrame, schema: pa.Schema, run_id: str, snapshot_id: int) -> pa.Table:
    frame = frame.assign(run_id=run_id, input_snapshot_id=snapshot_id)
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def run_batch_inference(
    s: Settings,
    run_id: str | None = None,
    resume_run_id: str | None = None,
    model_version: int | None = None,
    snapshot_id: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Predict every row of a features snapshot exactly once, resuming an unfinished run."""
    started = time.monotonic()
    catalog = ensure_tables(s)
    store = CheckpointStore(s.resolved_database_url)
    dataset = s.table_id(s.features_table)
    if resume_run_id:
        run = store.get_run(resume_run_id)
        snapshot_id, model_version = run.snapshot_id, run.model_version
    features = catalog.load_table(dataset)
    predictions = catalog.load_table(s.table_id(s.predictions_table))
    snapshot = features.snapshot_by_id(snapshot_id) if snapshot_id else features.current_snapshot()
    if snapshot is None:
        raise LookupError(f"{dataset} has no snapshot yet; run the preprocess flow first")
    row = model_registry.get_version(s, model_version)
    ref = model_registry.model_ref(row)
    if not resume_run_id:
        run = store.find_unfinished(KIND, dataset, snapshot.snapshot_id, ref.version)
    resumed = run is not None if not resume_run_id else True
    if run is None:
        total = int((snapshot.summary or {}).get("total-records", 0))
        run = store.start_run(
            run_id, kind=KIND, dataset=dataset, snapshot_id=snapshot.snapshot_id,
            model_version=ref.version, mode="fused", rows_total=total,
        )  # fmt: skip
    else:
        store.set_status(run.run_id, "running")
    done = predicted_keys(s, run.run_id)
    schema = predictions.schema().as_arrow()
    unit = store.next_unit(run.run_id)
    predicted = units = 0
    connect(s)
    try:
        for frame in prediction_batches(s, ref, snapshot.snapshot_id, done):
            if frame.empty:
                continue
            predictions.append(
                _to_arrow(frame, schema, run.run_id, snapshot.snapshot_id),
                snapshot_properties={"mlp.run_id": run.run_id, "mlp.unit": str(unit)},
            )
            committed = predictions.current_snapshot()
            store.record_unit(
                run.run_id,
                unit,
                len(frame),
                len(frame),
                committed.snapshot_id if committed else None,
            )
            predicted, units, unit = predicted + len(frame), units + 1, unit + 1
            if on_progress:
                on_progress(len(done) + predicted, run.rows_total)
    except BaseException as error:
        store.set_status(run.run_id, "failed", error=repr(error)[:2000])
        raise
    store.set_status(run.run_id, "succeeded")
    return BatchResult(
        run_id=run.run_id, resumed=resumed, snapshot_id=snapshot.snapshot_id,
        model_version=ref.version, input_rows=run.rows_total, skipped_rows=len(done),
        predicted_rows=predicted, units_committed=units, seconds=time.monotonic() - started,
    )  # fmt: skip
