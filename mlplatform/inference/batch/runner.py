"""Batch inference: Ray Data over a pinned Iceberg snapshot, one prediction per input row.

Units (inference.batch.units) -> read stage (CPU tasks) -> model stage (fused: actor pool with
the model; separated: Ray Serve deployment), which writes each unit's predictions as data files
(inference.batch.unit_files) -> the driver gathers each unit's files and commits complete units
to the Iceberg predictions table, then marks them done in the checkpoint store. No prediction
row passes through the driver.
The protocol that makes crashes, restarts and concurrent runs lose and double nothing is in the
checkpoints package's docstring. A unit whose attempt fails is tried again in a later pass, up to
unit_max_attempts; then it is failed, and the run fails when failed units hold more than
max_failed_fraction of the rows.

This module is the driver: the run (run_batch_inference) and its passes over pending units. The
job and its run, lease and reconciliation are in inference.batch.job; the Ray Data stages in
inference.batch.pipeline; the request and the result in inference.batch.request and .results.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from checkpoints.store import FAILED, PENDING, RunInProgress
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.batch.commit import commit_units
from mlplatform.inference.batch.job import Job, hold_lease, open_job, reconcile
from mlplatform.inference.batch.model_pool import warm_up
from mlplatform.inference.batch.pipeline import batch_model_loader, unit_pipeline, watch_output
from mlplatform.inference.batch.predictors import deploy_batch_model
from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.results import (
    BatchInferenceFailed,
    BatchResult,
    FailedUnit,
    failure_report,
)
from mlplatform.inference.batch.unit_files import (
    ARRIVED,
    REASONS,
    ROWS,
    UnitFiles,
    WriteTarget,
    delete_files,
    part_files,
)
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS
from mlplatform.settings import Settings


def commit_interval_rows(s: Settings, rows_total: int) -> int:
    """Complete units are committed once this many rows wait (or commit_every_s passed): at most
    commit_every_rows, and at most commit_every_fraction of the run, which bounds the rows a
    crash makes predict again to that fraction while a run has about 1/fraction commits."""
    return max(1, min(s.commit_every_rows, math.ceil(s.commit_every_fraction * rows_total)))


def _commit(job: Job, ready: dict[int, UnitFiles]) -> None:
    """Steps 3 and 4 of the protocol for the complete units in `ready`, which it empties."""
    if not ready:
        return
    if job.lease_lost.is_set():
        raise RunInProgress(f"run {job.run.run_id}: lease lost to another process; stopping")
    snapshot_id, rows = commit_units(job.predictions, job.run.run_id, ready)
    for unit, part in ready.items():
        if unit not in rows:  # committed by another run: these files will never be
            delete_files(job.predictions.io, part.files)
    if rows:
        job.store.mark_done(job.run.run_id, rows, snapshot_id)
        job.committed_rows += sum(rows.values())
        job.commits += 1
        job.step("first_commit")
        job.step("last_commit", again=True)
        for unit in rows:
            for reason, count in ready[unit].refused.items():
                job.refused[reason] = job.refused.get(reason, 0) + count
    ready.clear()
    if job.on_progress:
        job.on_progress(job.store.progress(job.run.run_id)[0], job.run.units_total)


def _run_pass(job: Job, units: list[dict]) -> dict[int, str]:
    """Predict and commit the units; {unit: error} of those whose attempt failed. The driver
    sees one metadata row per unit part (unit_files): the workers wrote the predictions."""
    written: dict[int, UnitFiles] = {}
    arrived: dict[int, int] = {}
    errors: dict[int, str] = {}
    finished: set[int] = set()
    ready: dict[int, UnitFiles] = {}
    last_commit = time.monotonic()
    every_rows = commit_interval_rows(job.s, job.run.rows_total)
    target = WriteTarget.of(job.predictions, job.s.key_column, job.run.run_id, job.run.snapshot_id)
    pipeline = unit_pipeline(job.s, job.ref, job.mode, units, job.read_kwargs, target, job.app_name)
    io = job.predictions.io
    for table in watch_output(pipeline, job.s.stall_timeout_s):
        job.step("first_prediction")
        for row in table.to_pylist():
            unit, files = row[UNIT], part_files(row)
            if unit in errors:
                delete_files(io, files)
                continue
            if row[ERROR]:
                errors[unit] = row[ERROR]
                delete_files(io, files + written.pop(unit, UnitFiles()).files)
                continue
            written.setdefault(unit, UnitFiles()).add(row[ROWS], files, json.loads(row[REASONS]))
            arrived[unit] = arrived.get(unit, 0) + row[ARRIVED]
            if arrived[unit] >= max(row[UNIT_ROWS], 1):
                ready[unit] = written.pop(unit)
                finished.add(unit)
        pending_rows = sum(part.rows for part in ready.values())
        # The first complete units at once (the run's first results, seconds after its
        # start), then every every_rows rows or commit_every_s seconds.
        due = not job.commits or time.monotonic() - last_commit >= job.s.commit_every_s
        if pending_rows >= every_rows or (ready and due):
            _commit(job, ready)
            last_commit = time.monotonic()
    _commit(job, ready)
    for part in written.values():  # incomplete: never committed
        delete_files(io, part.files)
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
                "rows": u.rows_in,
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
        job.step("ray_connected")
        try:
            if job.mode == "separated":
                job.app_name = deploy_batch_model(s, job.ref, batch_model_loader(s))
            else:
                warm_up(s, job.ref, batch_model_loader(s))
            job.step("pool_ready")
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
