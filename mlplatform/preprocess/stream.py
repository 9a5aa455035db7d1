"""The preprocessing job in stream mode: raw events from the Pulsar raw-events topic through the
same checks as the batch job, into the same sinks, on the Flink session cluster, until stopped.

Two jobs per namespace, each with its own subscriptions, checkpoints and state:
- the real-time job, `preprocess-stream-<namespace>`: the checks on the raw events, into the
  features and quarantine topics; checkpoints every MLP_FLINK_CHECKPOINT_INTERVAL_S (2 s), so
  that a failure replays little and its tasks start fast (no Iceberg catalog or tables to open);
- the lake job, `preprocess-lake-<namespace>`: the features and quarantine topics copied into
  the Iceberg tables, with the windows and the counts per outcome computed from them
  (flink_job.lake_statements), committed on its checkpoints every
  MLP_FLINK_LAKE_COMMIT_INTERVAL_S (60 s): a commit a minute, not one per real-time
  checkpoint. It does not parse or check an event again (the cores go to the real-time path),
  so the tables hold exactly the rows the topics hold; it drops the repeats an at-least-once
  delivery publishes after a failure by the raw event each message names. After a failure it
  restarts LAKE_RESTART_BACKOFF_MS later than the real-time job, which takes the cores first.
  Its subscriptions to the two topics are made before either job starts, so the topics keep
  every row for it.

Lifecycle, for both jobs:
- start: submits each job that does not run, resuming from the savepoint the last stop
  recorded (none on the first start: the topic is read from its earliest message).
- stop: stop-with-savepoint through the cluster's REST API (no drain: open windows stay open
  in the savepoint and close after the resume). A savepoint holds the source's position, the
  per-event-id state and the window state; the job's sinks commit with it. Stopping and
  starting again therefore loses and doubles nothing.
- The record of each job's last start and stop (job id, run id, savepoint) is a small JSON
  file in the state folder.

Producers of the raw-events topic must send unbatched messages. The Flink Pulsar connector
(4.1.0) resumes a savepoint or checkpoint after the last consumed *entry*: when a batch (one
entry) was partly read at that moment, the rest of it is skipped (measured: 27 messages of a
40-message batch lost). Unbatched, each message is an entry of its own and nothing is skipped.

A failed task (a TaskManager killed, say; `infra.flink_cluster up` starts a new one) restarts
the job from its last checkpoint. The Iceberg tables stay exact (their sinks commit on
checkpoints). The Pulsar topics follow MLP_FLINK_STREAM_DELIVERY:
- at-least-once (default): rows are visible at once, and what the failed task published since
  its last checkpoint is published again. Each features message carries the raw event's
  partition and message id in its properties, so the stream consumers drop the repeats and
  predictions stay exactly once (inference/stream/consumer.py). That needs each features
  partition to get a raw partition's events in order: parallelism 1 (checked at start).
- exactly-once: each checkpoint's rows are published in a Pulsar transaction, so what the failed
  task published after that checkpoint is never visible; the broker aborts its transaction after
  MLP_FLINK_TRANSACTION_TIMEOUT_S, holding the topic's later messages back from consumers until
  then. The price is latency: rows reach the topics' consumers when the checkpoint that covers
  them completes.
Checkpoints are retained when the job is cancelled or the cluster goes down: a start after a job
that ended without a savepoint resumes from its latest completed checkpoint instead of reading
the topic from the start again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pyiceberg.expressions import EqualTo

from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.connectors.pulsar_io import (
    ensure_partitioned_topic,
    ensure_subscription,
    topic_partitions,
)
from mlplatform.preprocess.batch import (
    FlinkJobError,
    PreprocessResult,
    job_web_url,
    prepare_sinks,
    run_flink_jobs,
)
from mlplatform.preprocess.flink_job import ALREADY_INGESTED, WRITTEN
from mlplatform.preprocess.schema_evolution import table_columns
from mlplatform.settings import Settings

ACTIVE_STATES = {"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING"}


def stream_settings(s: Settings) -> Settings:
    """Stream mode always runs on the session cluster (a local mini-cluster dies with the
    process that started it, and a savepoint needs a cluster to take it)."""
    return s if s.flink_mode == "session" else s.model_copy(update={"flink_mode": "session"})


TOPICS, LAKE = "topics", "lake"  # the two jobs (flink_job.PARTS)
LAKE_RESTART_BACKOFF_MS = 15_000
LAKE_FLUSH_MS = 500


def job_name(s: Settings, part: str = TOPICS) -> str:
    return f"preprocess-{'stream' if part == TOPICS else 'lake'}-{s.namespace}"


def record_path(s: Settings, part: str = TOPICS) -> Path:
    return s.state_dir / "flink" / f"{job_name(s, part)}.json"


def read_record(s: Settings, part: str = TOPICS) -> dict[str, Any]:
    path = record_path(s, part)
    return json.loads(path.read_text()) if path.exists() else {}


def _write_record(s: Settings, record: dict[str, Any], part: str = TOPICS) -> None:
    path = record_path(s, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(record, indent=1))
    path.with_suffix(".tmp").replace(path)  # a crash leaves the old record or the new one


def _rest(s: Settings, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = httpx.request(method, f"{s.flink_rest_url.rstrip('/')}{path}", timeout=30, **kwargs)
    if response.status_code >= 400:
        raise FlinkJobError(f"Flink REST {method} {path}: {response.status_code} {response.text}")
    return response.json()


def active_jobs(s: Settings) -> dict[str, str | None]:
    """The ids of the two stream jobs (TOPICS, LAKE) while they run on the cluster, else None;
    one call to the cluster's REST API."""
    names = {job_name(s, part): part for part in (TOPICS, LAKE)}
    found: dict[str, str | None] = dict.fromkeys((TOPICS, LAKE))
    for job in _rest(s, "GET", "/jobs/overview")["jobs"]:
        if job["name"] in names and job["state"] in ACTIVE_STATES:
            found[names[job["name"]]] = job["jid"]
    return found


def active_job(s: Settings, part: str = TOPICS) -> str | None:
    """The id of the stream job (the real-time one, or the lake's) while it runs, else None."""
    return active_jobs(s)[part]


def checkpoint_dir(s: Settings) -> Path:
    return s.state_dir / "flink" / "checkpoints"


def latest_checkpoint(s: Settings, job_id: str) -> str | None:
    """The job's newest completed (retained) checkpoint, or None."""
    done = [p.parent for p in (checkpoint_dir(s) / job_id).glob("chk-*/_metadata")]
    if not done:
        return None
    return str(max(done, key=lambda p: int(p.name.removeprefix("chk-"))))


def resume_point(s: Settings, record: dict[str, Any]) -> str | None:
    """Where the next start resumes: the last stop's savepoint; after a job that ended
    without one (cancelled, cluster down), its newest checkpoint; else where it resumed from."""
    if record.get("stopped_job_id") == record.get("job_id") and record.get("savepoint"):
        return record["savepoint"]
    if record.get("job_id"):
        return latest_checkpoint(s, record["job_id"]) or record.get("resumed_from")
    return None


def start_stream(s: Settings, run_id: str) -> dict[str, Any]:
    """Submit the two stream jobs (each resuming from its last savepoint) unless they run; the
    record of the real-time job's start, with the lake job's id (lake_job_id)."""
    s = stream_settings(s)
    if s.flink_stream_delivery == "at-least-once" and s.flink_parallelism != 1:
        raise FlinkJobError(
            f"MLP_FLINK_PARALLELISM={s.flink_parallelism} with MLP_FLINK_STREAM_DELIVERY="
            "at-least-once: the stream consumers tell the job's repeats by the raw events' order "
            "on each features partition, which only one sink keeps; use parallelism 1 or "
            "MLP_FLINK_STREAM_DELIVERY=exactly-once"
        )
    running = active_jobs(s)
    records = {part: {**read_record(s, part), "job_id": job} for part, job in running.items()}
    if not all(running.values()):
        # Optional columns schema evolution added are read from the events as in batch mode.
        _, optional = table_columns(prepare_sinks(s), s.dataset_spec)
        ensure_partitioned_topic(s, s.raw_events_topic, 1)
        for topic in (s.features_topic, s.quarantine_topic):  # kept for the lake job from now
            ensure_subscription(s, topic, job_name(s, LAKE))
        todo = [part for part, job in running.items() if job is None]
        savepoints = {part: resume_point(s, read_record(s, part)) for part in todo}
        partitions = topic_partitions(s, s.features_topic)  # the lake reads each on its own
        jobs = [_job_config(s, run_id, part, savepoints[part], partitions) for part in todo]
        # One client JVM submits both, one after the other.
        ids = run_flink_jobs(
            s, s.state_dir, job_name(s), jobs, timeout_s=300, optional_columns=optional
        )
        for part, job_id in zip(todo, ids, strict=True):
            records[part] = {
                "job_id": job_id,
                "run_id": run_id,
                "started_at": datetime.now(UTC).isoformat(),
                "resumed_from": savepoints[part],
            }
            _write_record(s, records[part], part)
    return {
        **records[TOPICS],
        "lake_job_id": records[LAKE]["job_id"],
        "already_running": running[TOPICS] is not None,
    }


def _job_config(
    s: Settings, run_id: str, part: str, savepoint: str | None, features_partitions: int
) -> dict[str, Any]:
    """What one of the two jobs' config sets beyond the common one."""
    interval_s = s.flink_checkpoint_interval_s if part == TOPICS else s.flink_lake_commit_interval_s
    return {
        "job_name": job_name(s, part),
        "mode": "stream",
        "part": part,
        "run_id": run_id,
        "savepoint_path": savepoint,
        "sources": [{"format": "json"}],
        "features_partitions": features_partitions,
        "checkpoint_dir": checkpoint_dir(s).as_uri(),
        "checkpoint_interval_ms": int(interval_s * 1000),
        "restart_backoff_ms": 100 if part == TOPICS else LAKE_RESTART_BACKOFF_MS,
        # The lake needs no low latency: fuller fetches and network buffers cost less CPU,
        # which the real-time job on the same cores gets instead.
        "flush_ms": s.flink_stream_flush_ms if part == TOPICS else LAKE_FLUSH_MS,
    }


def stop_stream(s: Settings, timeout_s: float = 180) -> str:
    """Stop the two stream jobs with savepoints; the real-time job's savepoint (each job's is
    recorded for its next start). Raises FlinkJobError when the real-time job is not running
    or a savepoint fails."""
    s = stream_settings(s)
    running = active_jobs(s)
    if running[TOPICS] is None:
        raise FlinkJobError(f"stream job {job_name(s)} is not running on {s.flink_rest_url}")
    with ThreadPoolExecutor(2) as pool:
        topics, _ = pool.map(lambda part: _stop_job(s, part, running[part], timeout_s), running)
    return topics or ""


NOT_RUNNING = "Not all required tasks are currently running"  # Flink's refusal, in a restart


def _stop_job(s: Settings, part: str, job_id: str | None, timeout_s: float) -> str | None:
    """One job stopped with a savepoint, recorded; its location (None: it was not running).
    A job in a restart (a TaskManager lost, say) cannot take a savepoint: asked again each
    second until its tasks run or `timeout_s` has passed."""
    if job_id is None:
        return None
    target = (s.state_dir / "flink" / "savepoints").as_uri()
    deadline = time.monotonic() + timeout_s
    while True:
        operation = _savepoint(s, job_id, target, deadline, timeout_s)
        cause = (operation.get("failure-cause") or {}).get("stack-trace", "")
        if NOT_RUNNING not in cause or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if cause:
        raise FlinkJobError(f"stop-with-savepoint of {job_id} failed:\n{cause[:2000]}")
    savepoint = operation["location"]
    stopped = {"savepoint": savepoint, "stopped_job_id": job_id}
    record = {**read_record(s, part), **stopped, "stopped_at": datetime.now(UTC).isoformat()}
    _write_record(s, record, part)
    return savepoint


def _savepoint(
    s: Settings, job_id: str, target: str, deadline: float, timeout_s: float
) -> dict[str, Any]:
    """One stop-with-savepoint asked for and waited on: its operation (location or failure)."""
    trigger = _rest(
        s, "POST", f"/jobs/{job_id}/stop", json={"targetDirectory": target, "drain": False}
    )["request-id"]
    while True:
        status = _rest(s, "GET", f"/jobs/{job_id}/savepoints/{trigger}")
        if status["status"]["id"] == "COMPLETED":
            return status.get("operation") or {}
        if time.monotonic() > deadline:
            raise FlinkJobError(f"savepoint of {job_id} not done after {timeout_s:.0f}s")
        time.sleep(0.5)


def cancel_stream(s: Settings) -> list[str]:
    """Cancel the running stream jobs without a savepoint (their checkpoints stay: the next
    start resumes from the newest); their ids."""
    s = stream_settings(s)
    jobs = [job for job in active_jobs(s).values() if job]
    for job in jobs:
        _rest(s, "PATCH", f"/jobs/{job}", params={"mode": "cancel"})
    return jobs


def run_counts(s: Settings, run_id: str) -> dict[str, int]:
    """Rows per outcome the stream job committed under `run_id`."""
    table = load_table(s, s.preprocess_counts_table)
    rows = table.scan(row_filter=EqualTo("run_id", run_id)).to_arrow()
    counts: Counter[str] = Counter()
    for outcome, n in zip(rows["outcome"].to_pylist(), rows["row_count"].to_pylist(), strict=True):
        counts[outcome] += n
    return dict(counts)


def stream_result(s: Settings) -> PreprocessResult:
    """The last started stream run's report: its rows per outcome, committed so far."""
    record = read_record(s)
    counts = run_counts(s, record["run_id"])
    snapshot = load_table(s, s.features_table).current_snapshot()
    by_reason = {k: v for k, v in counts.items() if k not in (WRITTEN, ALREADY_INGESTED)}
    return PreprocessResult(
        files=0,
        features_rows=counts.get(WRITTEN, 0),
        quarantined_rows=sum(by_reason.values()),
        job_id=record["job_id"],
        features_snapshot_id=snapshot.snapshot_id if snapshot else None,
        flink_job_url=job_web_url(s, record["job_id"]),
        rows_read=sum(counts.values()),
        quarantined_by_reason=dict(sorted(by_reason.items())),
    )
