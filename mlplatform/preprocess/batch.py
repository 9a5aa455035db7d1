"""Run the PyFlink preprocessing job from the main environment and account for what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
from pyiceberg.table import Table
from sqlalchemy.engine import make_url

from mlplatform.connectors.iceberg_tables import ensure_tables
from mlplatform.connectors.pulsar_io import ensure_partitioned_topic, ensure_subscription
from mlplatform.preprocess.flink_job import ALREADY_INGESTED, WRITTEN
from mlplatform.preprocess.landing_files import claim, plan_sources
from mlplatform.preprocess.schema_evolution import add_columns, set_aside, table_columns
from mlplatform.sample_data.demo_rows import header
from mlplatform.settings import PROJECT_DIR, Settings
from mlplatform.settings.secrets import owner_only_file

JOB_FILE = Path(__file__).resolve().parent / "flink_job.py"


class FlinkJobError(RuntimeError):
    """The Flink job failed; the message carries Flink's own error."""


@dataclass(frozen=True)
class PreprocessResult:
    files: int
    features_rows: int  # written to both feature sinks
    quarantined_rows: int
    job_id: str
    features_snapshot_id: int | None
    flink_job_url: str | None = None  # the job in the session cluster's web UI
    rows_read: int = 0  # data lines (headers excluded)
    already_ingested: int = 0  # valid rows whose event id the features table had: skipped
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    added_columns: dict[str, str] = field(default_factory=dict)  # schema evolution: name -> type


def jdbc_catalog_options(s: Settings) -> dict[str, str]:
    """Flink's JdbcCatalog options for the same SQL catalog PyIceberg uses."""
    url = make_url(s.resolved_catalog_url)
    if url.get_backend_name() == "sqlite":
        # Several Iceberg sinks commit at the same moment. In WAL mode a reader never blocks
        # the committing writer, and a busy writer is waited for instead of failing at once.
        jdbc = f"jdbc:sqlite:{url.database}?journal_mode=WAL&busy_timeout=60000"
    elif url.get_backend_name() == "postgresql":
        jdbc = f"jdbc:postgresql://{url.host}:{url.port or 5432}/{url.database}"
    else:
        raise ValueError(f"catalog_url {s.resolved_catalog_url!r}: only sqlite and postgresql")
    options = {
        "type": "iceberg",
        "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        "uri": jdbc,
        "warehouse": s.resolved_warehouse,
        "jdbc.schema-version": "V1",
        # PyIceberg creates the catalog's tables (ensure_tables runs before any job). Iceberg's
        # check for them leaves a read transaction open on a pooled SQLite connection, and a
        # commit on that connection then fails at once with SQLITE_BUSY(_SNAPSHOT) whenever
        # another committer wrote meanwhile (measured: 3 of 4 concurrent committers failed).
        "jdbc.init-catalog-tables": "false",
    }
    if url.username:
        options["jdbc.user"] = url.username
    if url.password:
        options["jdbc.password"] = url.password
    return options


def replay_window_start(s: Settings, today: date | None = None) -> date:
    """The first event date the replay check reads (flink_job.classification_sql)."""
    return (today or datetime.now(UTC).date()) - timedelta(days=s.replay_window_days)


def job_config(
    s: Settings,
    input_dir: Path,
    job_name: str,
    token_file: Path | None = None,
    sources: list[dict] | None = None,
    optional_columns: dict[str, str] | None = None,
) -> dict:
    """The job's JSON config. Pulsar's token goes by file path only, never by value.

    sources: the job's inputs (raw_files.plan_sources); default: `input_dir` as CSV files
    with the dataset's header. optional_columns: the features table's columns beyond the
    dataset's (name -> type), in the table's order.
    """
    default = {"format": "csv", "path": f"file://{input_dir}", "columns": s.dataset_spec.columns}
    return {
        "job_name": job_name,
        "run_id": job_name,
        "mode": "batch",
        "sources": sources if sources is not None else [{**default, "header": header(s)}],
        "counts_path": f"file://{counts_dir(s, job_name)}",
        "max_line_bytes": s.max_line_bytes,
        "replay_window_start": replay_window_start(s).isoformat(),
        "key_column": s.key_column,
        "features": [f.model_dump() for f in s.dataset_spec.features],
        "derived": [{"name": d.name, "sql": d.sql()} for d in s.dataset_spec.derived],
        "label_column": s.label_column,
        "label_names": s.label_names,
        "optional_columns": [{"name": k, "type": v} for k, v in (optional_columns or {}).items()],
        "catalog_name": s.catalog_name,
        "namespace": s.namespace,
        "features_table": s.features_table,
        "quarantine_table": s.quarantine_table,
        "windows_table": s.feature_windows_table,
        "counts_table": s.preprocess_counts_table,
        "window_key": s.resolved_window_key,
        "window_s": s.feature_window_s,
        "watermark_delay_s": s.watermark_delay_s,
        "raw_events_topic": s.raw_events_topic,
        "checkpoint_interval_ms": int(s.flink_checkpoint_interval_s * 1000),
        "flush_ms": s.flink_stream_flush_ms,
        "dedup_horizon_ms": int(s.flink_dedup_horizon_s * 1000),
        "state_backend": s.flink_state_backend,
        "delivery": s.flink_stream_delivery,
        "transaction_timeout_ms": int(s.flink_transaction_timeout_s * 1000),
        "quarantine_topic": s.quarantine_topic,
        "iceberg_catalog_options": jdbc_catalog_options(s),
        "features_topic": s.features_topic,
        "pulsar_service_url": s.pulsar_service_url,
        "pulsar_admin_url": s.pulsar_admin_url,
        "pulsar_token_file": str(token_file) if token_file else None,
        "parallelism": s.flink_parallelism,
        "python_executable": str(s.flink_python),
        "rest_url": s.flink_rest_url if s.flink_mode == "session" else None,
    }


def counts_dir(s: Settings, job_name: str) -> Path:
    """Where the job writes its count of rows per outcome (JSON lines)."""
    return s.state_dir / "flink" / f"{job_name}-counts"


def read_counts(folder: Path) -> dict[str, int]:
    """The job's rows per outcome ("written", "already_ingested" or a quarantine reason)."""
    counts: dict[str, int] = {}
    for part in sorted(folder.rglob("*")):
        if part.is_file() and not part.name.startswith((".", "_")):
            for line in part.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    counts[row["outcome"]] = counts.get(row["outcome"], 0) + int(row["rows"])
    return counts


def claim_landing_files(s: Settings, run_id: str) -> Path | None:
    """Move the landing folder's raw files (CSV, JSON lines, Parquet) into a folder of this
    run; None when there are none. A crashed run's folder is taken over whole."""
    return claim(s.resolved_landing_dir, run_id)


def run_flink_job(
    s: Settings,
    input_dir: Path,
    job_name: str,
    timeout_s: float = 900,
    sources: list[dict] | None = None,
    optional_columns: dict[str, str] | None = None,
    extra: dict | None = None,
) -> str:
    """Run the job in the Flink environment; return the Flink job id or raise with its error.
    `extra` overrides keys of the job's config (stream mode: mode, run_id, savepoint_path)."""
    jobs = [extra or {}]
    return run_flink_jobs(s, input_dir, job_name, jobs, timeout_s, sources, optional_columns)[0]


def run_flink_jobs(
    s: Settings,
    input_dir: Path,
    job_name: str,
    jobs: list[dict],
    timeout_s: float = 900,
    sources: list[dict] | None = None,
    optional_columns: dict[str, str] | None = None,
) -> list[str]:
    """Submit one job per item of `jobs` (each overrides keys of the config, its job_name
    among them) from one process of the Flink environment, one after the other: one client
    JVM for them all. Their Flink job ids, in order; raises with Flink's error."""
    if not s.flink_python.exists():
        raise FlinkJobError(f"Flink environment missing at {s.flink_python}: run `make setup`")
    config_path = s.state_dir / "flink" / f"{job_name}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    token_file = s.resolved_pulsar_token_file
    if token_file is None and s.pulsar_auth_token is not None:
        # A token given by value reaches the job as an owner-only file, kept: a stream job's
        # Pulsar clients read it again when they reconnect.
        token = s.pulsar_auth_token.get_secret_value()
        token_file = owner_only_file(s.state_dir / "secrets", token, ".token")
    config = job_config(s, input_dir, job_name, token_file, sources, optional_columns)
    config["jobs"] = jobs
    # Owner-only: it may hold the catalog database's password (jdbc.password).
    config_path.unlink(missing_ok=True)
    config_path.touch(mode=0o600)
    config_path.write_text(json.dumps(config))
    shutil.rmtree(counts_dir(s, job_name), ignore_errors=True)  # a retry's counts are its own
    flink_logs = s.log_dir / "flink"
    flink_logs.mkdir(parents=True, exist_ok=True)
    try:
        completed = subprocess.run(
            [str(s.flink_python), str(JOB_FILE), str(config_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=PROJECT_DIR,
            env={**os.environ, "FLINK_LOG_DIR": str(flink_logs)},
        )
    finally:
        config_path.unlink(missing_ok=True)
    if completed.returncode != 0:
        log = s.log_dir / f"flink-{job_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(completed.stdout + completed.stderr)
        causes = [ln for ln in completed.stderr.splitlines() if "Caused by" in ln or "Error" in ln]
        summary = "\n".join(causes[-5:]) or completed.stderr[-2000:]
        job_id = _submitted_job_id(completed.stdout)
        if s.flink_mode == "session" and job_id:
            summary += f"\nroot cause in the cluster ({job_web_url(s, job_id)}):\n"
            summary += cluster_root_exception(s, job_id)
        raise FlinkJobError(f"Flink job {job_name} failed (full log: {log}):\n{summary}")
    return json.loads(completed.stdout.strip().splitlines()[-1])["job_ids"]


def _submitted_job_id(stdout: str) -> str | None:
    """The last job submitted (the one that failed)."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith('{"job_id"')]
    return json.loads(lines[-1])["job_id"] or None if lines else None


def job_web_url(s: Settings, job_id: str) -> str:
    """The job's page in the session cluster's web UI."""
    return f"{s.flink_rest_url.rstrip('/')}/#/job/{job_id}"


def cluster_root_exception(s: Settings, job_id: str) -> str:
    """The first lines of the job's root exception, from the session cluster's REST API."""
    try:
        response = httpx.get(f"{s.flink_rest_url.rstrip('/')}/jobs/{job_id}/exceptions", timeout=10)
        response.raise_for_status()
        history = response.json().get("exceptionHistory", {}).get("entries", [])
        trace = history[0]["stacktrace"] if history else response.json().get("root-exception")
    except (httpx.HTTPError, ValueError, KeyError) as error:
        return f"(the REST API gave no exception: {error})"
    lines = (trace or "").splitlines()
    causes = [ln for ln in lines if ln.startswith("Caused by")]
    return "\n".join(lines[:1] + causes[-3:])


def prepare_sinks(s: Settings) -> Table:
    """The tables and topics a preprocessing job writes (batch or stream), created when
    missing; the features table."""
    catalog = ensure_tables(s)
    ensure_partitioned_topic(s, s.features_topic, s.features_topic_partitions)
    ensure_subscription(s, s.features_topic, s.stream_subscription)
    ensure_partitioned_topic(s, s.quarantine_topic, 1)
    return catalog.load_table(s.table_id(s.features_table))


def preprocess(s: Settings, run_id: str) -> PreprocessResult:
    """Process every file in the landing folder into features (Iceberg + Pulsar) and quarantine.

    Raises IncompatibleSchemaError, before the job runs, when a file's declared schema does not
    fit the features table (the file is set aside in _rejected/<run_id>/); new columns a file
    declares are added to the table as optional columns first.
    """
    features = prepare_sinks(s)
    required, optional = table_columns(features, s.dataset_spec)
    input_dir = claim_landing_files(s, run_id)
    if input_dir is None:
        snapshot = features.current_snapshot()
        return PreprocessResult(0, 0, 0, "", snapshot.snapshot_id if snapshot else None)
    plan = plan_sources(input_dir, s.dataset_spec, required, optional)
    if plan.rejected:
        raise set_aside(plan.rejected, s.resolved_landing_dir / "_rejected" / run_id)
    if plan.added:
        add_columns(features, plan.added, plan.added_by, run_id)
    job_name = f"preprocess-{run_id}"
    job_id = run_flink_job(
        s, input_dir, job_name, sources=plan.sources, optional_columns={**optional, **plan.added}
    )
    counts = read_counts(counts_dir(s, job_name))
    shutil.rmtree(counts_dir(s, job_name), ignore_errors=True)
    processed = s.resolved_landing_dir / "_processed" / run_id
    processed.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(input_dir), processed)
    snapshot = features.refresh().current_snapshot()
    by_reason = {k: v for k, v in counts.items() if k not in (WRITTEN, ALREADY_INGESTED)}
    return PreprocessResult(
        files=plan.files,
        features_rows=counts.get(WRITTEN, 0),
        quarantined_rows=sum(by_reason.values()),
        job_id=job_id,
        features_snapshot_id=snapshot.snapshot_id if snapshot else None,
        flink_job_url=job_web_url(s, job_id) if s.flink_mode == "session" and job_id else None,
        rows_read=sum(counts.values()),
        already_ingested=counts.get(ALREADY_INGESTED, 0),
        quarantined_by_reason=dict(sorted(by_reason.items())),
        added_columns=plan.added,
    )
