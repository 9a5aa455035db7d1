"""The job a batch request names, and its run in the checkpoint store: opened (planned, or the
unfinished run continued), leased while it executes, reconciled with Iceberg on resume.

A job is a features snapshot, a model version and an optional row filter (checkpoints package
docstring: steps 0 and 1 of the commit protocol and the resume rule are done here).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from pyiceberg.table import Table

from checkpoints.store import CheckpointStore, Run, process_owner
from mlplatform.connectors.iceberg_tables import ensure_tables
from mlplatform.inference.batch.commit import committed_units, disable_auto_retry
from mlplatform.inference.batch.increments import (
    UNFINISHED,
    Increment,
    increment,
    lineage_key,
    previous_run,
)
from mlplatform.inference.batch.request import BatchRequest, Mode
from mlplatform.inference.batch.units import parse_row_filter, plan_units
from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings

KIND = "batch-inference"


@dataclass
class Job:
    """Everything one execution of a run needs."""

    s: Settings
    run: Run
    resumed: bool  # the run existed before this execution
    ref: ModelRef
    mode: Mode
    predictions: Table
    store: CheckpointStore
    owner: str
    read_kwargs: dict  # for read_units: columns (key first), row_filter, schema_json
    on_progress: Callable[[int, int], None] | None
    app_name: str | None = None  # the Serve application in separated mode
    # What the run covers: the rows appended after this snapshot (None: every row), and why.
    since_snapshot_id: int | None = None
    basis: str = "every row"
    # A run resumed by name (or an incremental run's unfinished one): failed units get new tries.
    retry_failed: bool = False
    lease_lost: threading.Event = field(default_factory=threading.Event)
    committed_rows: int = 0
    commits: int = 0
    # Committed rows refused for breaking the dataset's rules, by reason (this execution's).
    refused: dict[str, int] = field(default_factory=dict)
    # Seconds from the call's start to each fixed step (results.STEPS), this execution's.
    steps: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def step(self, name: str, again: bool = False) -> None:
        """Record that step `name` is reached now (the first time, unless `again`)."""
        if again or name not in self.steps:
            self.steps[name] = round(time.monotonic() - self.started, 3)


def job_key(
    dataset: str,
    snapshot_id: int,
    model_version: int,
    row_filter: str | None,
    predictor: str | None = None,
    since_snapshot_id: int | None = None,
) -> str:
    """A job's identity; `predictor` names the user's classes and options when set (their
    predictions are another job's than the registry model's); an incremental run's job covers
    the rows appended after `since_snapshot_id`."""
    text = f"{KIND}|{dataset}|{snapshot_id}|{model_version}|{row_filter or ''}"
    if predictor:
        text = f"{text}|{predictor}"
    if since_snapshot_id is not None:
        text = f"{text}|since:{since_snapshot_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def predictor_identity(s: Settings) -> str | None:
    """The user's predictor and preprocessor classes with their options; None without them."""
    if not (s.predictor_class or s.preprocessor_class):
        return None
    options = json.dumps(s.predictor_options, sort_keys=True, default=str)
    return f"{s.predictor_class or ''}|{s.preprocessor_class or ''}|{options}"


def open_job(
    s: Settings, request: BatchRequest, on_progress: Callable[[int, int], None] | None
) -> Job:
    """The request's job with its run: the job's unfinished run, or a new one planned now.

    resume_run_id names the run to continue; it must still be its job's current run. An
    incremental request covers the rows appended since its lineage's last run, after
    continuing that run if it did not finish (increments.py).
    """
    catalog = ensure_tables(s)
    store = CheckpointStore(s.resolved_database_url)
    dataset = s.table_id(s.features_table)
    predictor = predictor_identity(s)
    lineage = lineage_key(dataset, s.resolved_model_name, request.row_filter, predictor)
    previous = None
    if request.incremental and request.snapshot_id is not None:
        raise ValueError("an incremental run reads the latest snapshot: give no snapshot_id")
    if request.incremental and not request.resume_run_id:
        version = model_registry.get_version(s, request.model_version).version
        previous = previous_run(s, store, lineage, version)
        if previous is not None and previous.status in UNFINISHED:
            request = replace(request, resume_run_id=previous.run_id)
    resume_run_id = request.resume_run_id
    resumed_run = store.get_run(resume_run_id) if resume_run_id else None
    if resumed_run is not None:
        if resumed_run.status == "succeeded":
            raise ValueError(f"run {resume_run_id} has succeeded already: nothing to resume")
        request = replace(
            request,
            snapshot_id=resumed_run.snapshot_id,
            model_version=resumed_run.model_version,
            row_filter=resumed_run.row_filter,
        )
        dataset = resumed_run.dataset
    features = catalog.load_table(dataset)
    predictions = disable_auto_retry(catalog.load_table(s.table_id(s.predictions_table)))
    snapshot_id, row_filter = request.snapshot_id, request.row_filter
    snapshot = features.snapshot_by_id(snapshot_id) if snapshot_id else features.current_snapshot()
    if snapshot is None:
        where = f"snapshot {snapshot_id}" if snapshot_id else "no snapshot yet"
        raise LookupError(f"{dataset} has {where}; run the preprocess flow first")
    ref = model_registry.model_ref(model_registry.get_version(s, request.model_version))
    expression = parse_row_filter(row_filter, features)
    if resumed_run is not None:  # the run covers what it covered when it started
        since = resumed_run.since_snapshot_id
        part = Increment(since, frozenset(), f"continues run {resumed_run.run_id}")
    elif request.incremental:
        part = increment(features, previous, snapshot.snapshot_id)
    else:
        part = Increment(None, frozenset(), "every row")
    key = job_key(
        dataset, snapshot.snapshot_id, ref.version, row_filter, predictor, part.since_snapshot_id
    )
    mode = request.mode or s.batch_mode
    run, resumed = store.open_run(
        key,
        request.run_id,
        lambda: plan_units(
            features, snapshot.snapshot_id, expression, s.unit_rows, part.skip_files
        ),
        kind=KIND,
        dataset=dataset,
        snapshot_id=snapshot.snapshot_id,
        model_version=ref.version,
        mode=mode,
        row_filter=row_filter,
        # A run pinned to an older snapshot is no step of the lineage's chain.
        lineage=lineage if snapshot_id is None else None,
        since_snapshot_id=part.since_snapshot_id,
    )
    if resume_run_id and run.run_id != resume_run_id:
        raise LookupError(f"run {resume_run_id} is not the current run of its job ({run.run_id})")
    return Job(
        s,
        run,
        resumed,
        ref,
        mode,
        predictions,
        store,
        process_owner(),
        read_kwargs={
            "columns": [s.key_column, *ref.feature_order],
            "row_filter": row_filter,
            "schema_json": features.schema().model_dump_json(),
        },
        on_progress=on_progress,
        since_snapshot_id=part.since_snapshot_id,
        basis=part.basis,
        retry_failed=resumed_run is not None,
    )


@contextmanager
def hold_lease(job: Job) -> Iterator[None]:
    """Hold the run's lease, renewed in the background, for the duration of the block."""
    job.store.acquire(job.run.run_id, job.owner, job.s.lease_ttl_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(job.s.lease_ttl_s / 3):
            if not job.store.heartbeat(job.run.run_id, job.owner):
                job.lease_lost.set()
                return

    thread = threading.Thread(target=renew, name="checkpoint-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reconcile(job: Job) -> None:
    """Resume: units Iceberg holds but the store does not mark done (a crash between 3 and 4)."""
    in_iceberg = committed_units(job.predictions, job.run.run_id)
    done = {u.unit for u in job.store.units(job.run.run_id, "done")}
    missing = {unit: rows for unit, rows in in_iceberg.items() if unit not in done}
    if missing:
        job.store.mark_done(job.run.run_id, missing, None)
