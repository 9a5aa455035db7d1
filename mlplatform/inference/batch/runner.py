"""Batch inference: Ray Data over a pinned Iceberg snapshot, one prediction per input row.

Units (inference.batch.units) -> read stage (CPU tasks) -> model stage (fused: actor pool with
the model; separated: Ray Serve deployment) -> the driver gathers each unit's rows and commits
complete units to the Iceberg predictions table, then marks them done in the checkpoint store.
The protocol that makes crashes, restarts and concurrent runs lose and double nothing is in the
checkpoints package's docstring. A unit whose attempt fails is tried again in a later pass, up to
unit_max_attempts; then it is failed, and the run fails when failed units hold more than
max_failed_fraction of the rows.

This module is the driver: the run (run_batch_inference) and its passes over pending units. The
job and its run, lease and reconciliation are in inference.batch.job; the Ray Data stages in
inference.batch.pipeline; the request and the result in inference.batch.request and .results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from checkpoints.store import FAILED, PENDING, RunInProgress
from mlplatform.connectors.ray_runtime import connect
from mlplatform.dataset.prediction_record import (
    CLASS_INDEX,
    LABEL,
    MODEL_VERSION,
    PROBABILITIES,
    REASON,
)
from mlplatform.inference.batch.commit import commit_units
from mlplatform.inference.batch.job import Job, hold_lease, open_job, reconcile
from mlplatform.inference.batch.pipeline import batch_model_loader, unit_pipeline, watch_output
from mlplatform.inference.batch.predictors import serving_batch_model
from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.results import (
    BatchInferenceFailed,
    BatchResult,
    FailedUnit,
    failure_report,
)
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS
from mlplatform.settings import Settings


def commit_interval_rows(s: Settings, rows_total: int) -> int:
    """Complete units are committed once this many rows wait (or commit_every_s passed): at most
    commit_every_rows, and at most commit_every_fraction of the run, which bounds the rows a
    crash makes predict again to that fraction while a run has about 1/fraction commits."""
    return max(1, min(s.commit_every_rows, math.ceil(s.commit_every_fraction * rows_total)))


def predictions_rows(
    table: pa.Table, key: str, schema: pa.Schema, run_id: str, snapshot_id: int
) -> pa.Table:
    """The predictions table's rows of model-stage output (placeholder rows dropped), in the
    table's Arrow schema."""
    if table[key].null_count:
        table = table.filter(pc.is_valid(table[key]))
    n = table.num_rows
    out = table.select([key, CLASS_INDEX, LABEL, PROBABILITIES, MODEL_VERSION, REASON])
    out = out.append_column("run_id", pa.repeat(pa.scalar(run_id, pa.string()), n))
    out = out.append_column("input_snapshot_id", pa.repeat(pa.scalar(snapshot_id, pa.int64()), n))
    return out.cast(schema)


def unit_parts(table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """(unit, its rows) of model-stage output; zero-copy slices when a unit's rows are adjacent."""
    units = table[UNIT].to_numpy()
    if len(units) == 0:
        return
    if (np.diff(units) != 0).sum() + 1 != len(np.unique(units)):  # not grouped: group them
        order = np.argsort(units, kind="stable")
        table, units = table.take(order), units[order]
    starts = [0, *(np.flatnonzero(np.diff(units)) + 1).tolist(), len(units)]
    for first, end in zip(starts, starts[1:], strict=False):
        yield int(units[first]), table.slice(first, end - first)


def _commit(job: Job, ready: dict[int, pa.Table]) -> None:
    """Steps 3 and 4 of the protocol for the complete units in `ready`, which it empties."""
    if not ready:
        return
    if job.lease_lost.is_set():
        raise RunInProgress(f"run {job.run.run_id}: lease lost to another process; stopping")
    snapshot_id, rows = commit_units(job.predictions, job.run.run_id, ready)
    if rows:
        job.store.mark_done(job.run.run_id, rows, snapshot_id)
        job.committed_rows += sum(rows.values())
        job.commits += 1
        job.step("first_commit")
        job.step("last_commit", again=True)
        for unit in rows:
            for count in pc.value_counts(ready[unit][REASON].drop_null()).to_pylist():
                job.refused[count["values"]] = job.refused.get(count["values"], 0) + count["counts"]
    ready.clear()
    if job.on_progress:
        job.on_progress(job.store.progress(job.run.run_id)[0], job.run.units_total)


def _first_error(part: pa.Table) -> str | None:
    errors = part[ERROR]
    failed = pc.not_equal(errors, "")
    if not pc.any(failed).as_py():
        return None
    return errors.filter(failed)[0].as_py()


def _run_pass(job: Job, units: list[dict]) -> dict[int, str]:
    """Predict and commit the units; {unit: error} of those whose attempt failed."""
    buffers: dict[int, list[pa.Table]] = {}
    arrived: dict[int, int] = {}
    errors: dict[int, str] = {}
    finished: set[int] = set()
    ready: dict[int, pa.Table] = {}
    last_commit = time.monotonic()
    schema = job.predictions.schema().as_arrow()
    every_rows = commit_interval_rows(job.s, job.run.rows_total)
    pipeline = unit_pipeline(job.s, job.ref, job.mode, units, job.read_kwargs, job.app_name)
    for table in watch_output(pipeline, job.s.stall_timeout_s):
        job.step("first_prediction")
        for unit, part in unit_parts(table):
            if unit in errors:
                continue
            error = _first_error(part)
            if error is not None:
                errors[unit] = error
                buffers.pop(unit, None)
                continue
            buffers.setdefault(unit, []).append(part)
            arrived[unit] = arrived.get(unit, 0) + part.num_rows
            if arrived[unit] >= max(part[UNIT_ROWS][0].as_py(), 1):
                ready[unit] = predictions_rows(
                    pa.concat_tables(buffers.pop(unit)),
                    job.s.key_column,
                    schema,
                    job.run.run_id,
                    job.run.snapshot_id,
                )
                finished.add(unit)
        pending_rows = sum(t.num_rows for t in ready.values())
        due = time.monotonic() - last_commit >= job.s.commit_every_s
        if pending_rows >= every_rows or (ready and due):
            _commit(job, ready)
            last_commit = time.monotonic()
    _commit(job, ready)
    for spec in units:
        if spec["unit"] not in finished and spec["unit"] not in errors:
            errors[spec["unit"]] = (
                f"incomplete: {arrived.get(spec['unit'], 0)} of its rows came back from Ray Data"
            )
    return errors


def _execute(job: Job) -> list[FailedUnit]:
    """Passes over the run's pending units until none is left; the units that failed for good."""
    s, run_id = job.s, job.run.run_id
    while True:
        pending = job.store.units(run_id, PENDING)
        if not pending:
            break
        specs = [
            {
                "unit": u.unit,
                "file_path": u.file_path,
                "first_row_group": u.first_row_group,
                "row_groups": u.row_groups,
            }
            for u in pending
        ]
        errors = _run_pass(job, specs)
        job.store.mark_attempt_failed(run_id, errors, s.unit_max_attempts)
    return [
        FailedUnit(u.unit, u.file_path or "", u.rows_in, u.attempts, u.last_error or "")
        for u in job.store.units(run_id, FAILED)
    ]


def run_batch_inference(
    s: Settings,
    request: BatchRequest | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Predict every row of a features snapshot exactly once, continuing an unfinished run.

    request: which snapshot, model, filter and mode (default: the latest, the champion, every
    row, settings.batch_mode). on_progress(units done, units in the run) is called after every
    commit, from the store.
    """
    started = time.monotonic()
    request = request or BatchRequest()
    job = open_job(s, request, on_progress)
    job.started = started
    job.step("planned")
    store, run = job.store, job.run
    with hold_lease(job):
        if job.retry_failed:  # a resume gives failed units new attempts
            store.retry_failed(run.run_id)
        reconcile(job)
        skipped_units, skipped_rows = store.progress(run.run_id)
        connect(s)
        try:
            with ExitStack() as stack:
                if job.mode == "separated":
                    serving = serving_batch_model(s, job.ref, batch_model_loader(s))
                    job.app_name = stack.enter_context(serving)
                job.step("ray_connected")
                failed = _execute(job)
        except BaseException as error:
            store.finish(run.run_id, job.owner, "failed", repr(error)[:2000])
            raise
        failed_rows = sum(f.rows for f in failed)
        if failed and failed_rows > s.max_failed_fraction * run.rows_total:
            report = failure_report(run.run_id, failed, run.rows_total)
            store.finish(run.run_id, job.owner, "failed", report[:2000])
            raise BatchInferenceFailed(report)
        store.finish(run.run_id, job.owner, "partial" if failed else "succeeded")
    job.step("finished")
    return BatchResult(
        run_id=run.run_id,
        resumed=job.resumed,
        mode=job.mode,
        snapshot_id=run.snapshot_id,
        model_version=job.ref.version,
        input_rows=run.rows_total,
        units_total=run.units_total,
        skipped_units=skipped_units,
        skipped_rows=skipped_rows,
        predicted_rows=job.committed_rows,
        refused_rows=job.refused,
        commits=job.commits,
        failed_units=failed,
        seconds=time.monotonic() - started,
        steps=job.steps,
        since_snapshot_id=job.since_snapshot_id,
        basis=job.basis,
    )
