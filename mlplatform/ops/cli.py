"""The `mlp` command line. Exit codes: 0 done, 1 the operation failed, 2 bad usage."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import typer
from sqlalchemy import Engine

from mlplatform.ops.cli_errors import failing_on
from mlplatform.ops.functions_cli import app as functions_app
from mlplatform.registry import model_registry
from mlplatform.settings import get_settings

app = typer.Typer(help="Operate the ML platform.", no_args_is_help=True)
models = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models, name="models")
serving = typer.Typer(
    help="Online serving on Ray Serve: start, stop, status.", no_args_is_help=True
)
app.add_typer(serving, name="serve")
runs = typer.Typer(help="Checkpointed runs: list with progress, resume.", no_args_is_help=True)
app.add_typer(runs, name="runs")
services = typer.Typer(help="The embedded services: up, down, status.", no_args_is_help=True)
app.add_typer(services, name="services")
database = typer.Typer(
    help="The platform's SQL database (checkpoints, registry): schema revisions.",
    no_args_is_help=True,
)
app.add_typer(database, name="db")
app.add_typer(functions_app, name="functions")
SERVICE_NAMES = typer.Argument(None, help="Services (default: all).")
MODEL = typer.Option(
    None,
    "--model",
    help="The registry's model by name; default: MLP_MODEL_NAME, else the dataset's.",
)
MODEL_FILE = typer.Argument(
    ..., help="A skops file (a scikit-learn classifier or pipeline) or an ONNX classifier (.onnx)."
)
FLOWS = ("preprocess", "retrain", "batch-inference", "stream-inference", "serving")


@models.command("names")
def model_names(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every model in the registry by name, with its champion's version."""
    models_by_name = model_registry.list_models(get_settings())
    if as_json:
        typer.echo(json.dumps(models_by_name, indent=2))
        return
    for name, champion in models_by_name.items():
        typer.echo(f"{name:<24} champion={'v' + str(champion) if champion else '-'}")


@models.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."), model: str | None = MODEL
) -> None:
    """One model's registered versions with stage, family, metrics and training snapshot."""
    rows = [
        {
            "version": v.version,
            "stage": v.stage,
            "family": v.family,
            "params": v.params,
            "accuracy": v.metrics.get("accuracy"),
            "macro_f1": v.metrics.get("macro_f1"),
            "snapshot": v.training_snapshot_id,
            "sha256": v.sha256[:12],
        }
        for v in model_registry.list_versions(get_settings().for_model(model))
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        scores = " ".join(
            f"{name}={r[key]:.4f}" if isinstance(r[key], float) else f"{name}=-"
            for name, key in (("acc", "accuracy"), ("f1", "macro_f1"))
        )
        typer.echo(
            f"v{r['version']:<4} {r['stage']:<10} {r['family']:<20} {scores} "
            f"snapshot={r['snapshot']}"
        )


@models.command("register")
def register_model(
    path: Path = MODEL_FILE,
    feature_order: str | None = typer.Option(
        None, help="Its input columns, comma-separated; default: as fitted, else the dataset's."
    ),
    snapshot_id: int | None = typer.Option(None, help="Score it on this features snapshot."),
    model: str | None = MODEL,
) -> None:
    """Import a model trained elsewhere: checked against the dataset, scored on the holdout,
    registered as a candidate, and promoted by the retraining rule when not worse."""
    from mlplatform.registry.model_registry import ModelIntegrityError
    from mlplatform.training.external_model import ModelMismatch, import_model
    from mlplatform.training.retrain import RetrainInProgress

    s = get_settings().for_model(model)
    order = feature_order.split(",") if feature_order else None
    with failing_on(ModelMismatch, ModelIntegrityError, LookupError, RetrainInProgress, OSError):
        result = import_model(s, path, order, snapshot_id)
    metric = s.promotion_metric
    typer.echo(
        f"v{result.version} registered ({metric}={result.metrics[metric]:.4f} on "
        f"{result.holdout_rows} holdout "
        f"rows of snapshot {result.snapshot_id}): {result.decision}: {result.reason}"
    )


@models.command("promote")
def promote(
    version: int = typer.Argument(..., help="The version to make champion."),
    model: str | None = MODEL,
) -> None:
    """Make a version the champion by hand (recorded with the reason 'promoted by hand')."""
    with failing_on(LookupError):
        model_registry.promote(get_settings().for_model(model), version)
    typer.echo(f"champion is now version {version}")


@models.command("rollback")
def rollback(
    version: int | None = typer.Argument(None, help="Version to restore; default: the previous"),
    model: str | None = MODEL,
) -> None:
    """Make an earlier version the champion again; running consumers switch to it."""
    with failing_on(LookupError):
        restored = model_registry.rollback(get_settings().for_model(model), version)
    typer.echo(f"champion is now version {restored}")


@serving.command("start")
def serve_start(
    version: int | None = typer.Option(None, help="Pin a version; default: follow the champion."),
    model: str | None = MODEL,
) -> None:
    """Deploy the model API on Ray Serve (or redeploy it) and print its address."""
    from mlplatform.inference.serving.deployment import start_serving

    with failing_on(LookupError):
        address = start_serving(get_settings().for_model(model), version)
    typer.echo(f"{address}  (POST /predict, POST /predict/bulk, GET /health, docs: {address}/docs)")


@serving.command("stop")
def serve_stop(model: str | None = MODEL) -> None:
    """Remove the model application from Ray Serve."""
    from mlplatform.inference.serving.deployment import stop_serving

    stop_serving(get_settings().for_model(model))
    typer.echo("stopped")


@serving.command("status")
def serve_status(model: str | None = MODEL) -> None:
    """The model API's status (RUNNING, DEPLOYING, NOT_DEPLOYED, ...), address and version."""
    from mlplatform.inference.serving.deployment import describe_serving

    state = describe_serving(get_settings().for_model(model))
    version = state.model_version
    typer.echo(f"{state.status} {state.address} model_version={version} ({state.detail})")
    raise typer.Exit(0 if state.status == "RUNNING" else 1)


def _services(action: str, names: list[str] | None) -> None:
    from infra.services import main

    raise typer.Exit(main([action, *(names or [])]))


@services.command("up")
def services_up(names: list[str] | None = SERVICE_NAMES) -> None:
    """Start Pulsar, the Prefect server and worker, and Ray (a running one is left alone)."""
    _services("up", names)


@services.command("down")
def services_down(names: list[str] | None = SERVICE_NAMES) -> None:
    """Stop the services."""
    _services("down", names)


@services.command("status")
def services_status(names: list[str] | None = SERVICE_NAMES) -> None:
    """Health and address of each service; exit code 1 when one is down."""
    _services("status", names)


@contextmanager
def _database() -> Iterator[tuple[Engine, str]]:
    """An engine on the settings' database that leaves its schema alone, and its printable URL."""
    from sqlalchemy.exc import SQLAlchemyError

    from checkpoints.database import new_engine

    url = get_settings().resolved_database_url
    engine = new_engine(url)
    try:
        with failing_on(SQLAlchemyError, RuntimeError):
            yield engine, engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()


@database.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest revision (the platform also does on first use)."""
    from checkpoints.database import current_revision, upgrade

    with _database() as (engine, url):
        with engine.connect() as connection:
            before = current_revision(connection)
        head = upgrade(engine)
    done = f"at {head} already" if before == head else f"{before or 'none'} -> {head}"
    typer.echo(f"{url}: {done}")


@database.command("current")
def db_current() -> None:
    """The database's schema revision; exit code 1 when it is not the newest."""
    from checkpoints.database import current_revision, head_revision

    with _database() as (engine, url), engine.connect() as connection:
        current, head = current_revision(connection), head_revision()
    if current == head:
        typer.echo(f"{url}: {current} (head)")
        return
    typer.echo(f"{url}: {current or 'none'} (head is {head}; run `mlp db upgrade`)")
    raise typer.Exit(1)


def _parse_params(params: list[str]) -> dict[str, object]:
    """key=value pairs; a value is read as JSON when it parses (numbers, null, lists)."""
    parsed: dict[str, object] = {}
    for pair in params:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--param")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _run_deployment(name: str, parameters: dict[str, object], wait: bool) -> None:
    from prefect.deployments import run_deployment

    with failing_on(ValueError, RuntimeError):
        flow_run = run_deployment(name=name, parameters=parameters, timeout=None if wait else 0)
    state = flow_run.state.name if flow_run.state else "SCHEDULED"
    typer.echo(f"{name}: flow run {flow_run.name} ({flow_run.id}) {state}")
    if wait and not (flow_run.state and flow_run.state.is_completed()):
        raise typer.Exit(1)


@app.command("run")
def run_flow(
    flow: str = typer.Argument(..., help=f"One of {', '.join(FLOWS)}."),
    deployment: str = typer.Option("default", help="The deployment of that flow."),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value (JSON values)."),  # noqa: B008
    wait: bool = typer.Option(True, help="Wait for the run; exit 1 unless it completes."),
) -> None:
    """Run a flow's deployment through the worker, like `prefect deployment run`."""
    if flow not in FLOWS:
        raise typer.BadParameter(f"unknown flow {flow!r}; one of {', '.join(FLOWS)}")
    _run_deployment(f"{flow}/{deployment}", _parse_params(param), wait)


@runs.command("list")
def runs_list(
    limit: int = typer.Option(20, help="How many of the newest runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Checkpointed runs, newest first, with units and rows done out of the total."""
    from mlplatform.ops.status import list_runs

    rows = list_runs(get_settings(), limit)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r.run_id:34} {r.kind:16} {r.status:10} {r.mode:9} rows {r.rows_done}/{r.rows_total}"
            f" units {r.units_done}/{r.units_total} failed {r.units_failed}"
            f" model v{r.model_version} snapshot {r.snapshot_id}"
            f" started {r.started_at}" + (f" error: {r.error}" if r.error else "")
        )


@runs.command("resume")
def runs_resume(
    run_id: str = typer.Argument(..., help="A run id from `mlp runs list`."),
    wait: bool = typer.Option(True, help="Wait for the run; exit 1 unless it completes."),
) -> None:
    """Continue a batch-inference run where its checkpoints stopped (a new flow run)."""
    from checkpoints.store import CheckpointStore

    with failing_on(LookupError):
        CheckpointStore(get_settings().resolved_database_url).get_run(run_id)
    _run_deployment("batch-inference/default", {"resume_run_id": run_id}, wait)


@app.command("quarantine")
def quarantine(
    limit: int = typer.Option(10, help="How many of the newest rows to show."),
    width: int = typer.Option(
        120, min=10, help="Show at most this many characters of each raw row (--json: all)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (raw rows whole)."),
) -> None:
    """Rows the preprocess flow rejected: counts by reason and the newest rows."""
    from pyiceberg.exceptions import NoSuchTableError

    from mlplatform.ops.status import quarantine_summary

    with failing_on(NoSuchTableError):
        counts, newest = quarantine_summary(get_settings(), limit)
    if as_json:
        typer.echo(json.dumps({"by_reason": counts, "newest": newest}, indent=2))
        return
    typer.echo(f"{sum(counts.values())} quarantined rows")
    for reason, count in counts.items():
        typer.echo(f"  {count:8}  {reason}")
    for row in newest:
        raw = clipped(row["raw"], width)
        typer.echo(f"{row['quarantined_at']}  {row['reason']:28} {row['source']}  {raw}")


def clipped(text: str | None, width: int) -> str:
    """repr of a raw row, cut to about `width` characters, with its whole length when cut."""
    shown = repr(text)
    if len(shown) <= width:
        return shown
    return f"{shown[:width]}... ({len(text or '')} characters; --json shows all)"


def _print_status(report: dict) -> None:
    typer.echo("\n".join(report["services"]))
    for t in report.get("topics", []):
        if not t["exists"]:
            typer.echo(f"{t['topic']}: not created yet")
            continue
        rates = f"in {t['msg_rate_in']}/s out {t['msg_rate_out']}/s"
        typer.echo(f"{t['topic']}: {t['messages_in']} messages, {rates}, backlog {t['backlog']}")
    for engine in ("ray", "flink"):
        if engine in report:
            typer.echo(f"{engine}: {report[engine]}")
    if "realtime" in report:
        typer.echo(_live_line(report["realtime"]))
    for r in report.get("runs", []):
        done = f"rows {r['rows_done']}/{r['rows_total']}"
        typer.echo(f"run {r['run_id']} {r['kind']} {r['status']} {done} started {r['started_at']}")
    for f in report.get("functions", []):
        counts = f"processed {f['processed']}, user exceptions {f['user_exceptions']}"
        typer.echo(
            f"function {f['function']}: {f['running']} running, {counts}, backlog {f['backlog']}"
        )
    for name, url in report["links"].items():
        typer.echo(f"{name}: {url}")


@app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    watch: float = typer.Option(
        0.0, "--watch", help="Then show the real-time path's live view every this many seconds."
    ),
) -> None:
    """Services, topics (rates, backlogs), Ray resources, the real-time path (rates, lag, raw
    event -> prediction latency), the newest runs, and links.

    Exit code 1 when a service is down.
    """
    from infra.services import SERVICES
    from infra.services import status as service_status
    from mlplatform.connectors.pulsar_io import topic_stats
    from mlplatform.inference.stream import functions_admin
    from mlplatform.ops.live_view import live_view
    from mlplatform.ops.status import flink_jobs, links, list_runs, ray_resources

    s = get_settings()
    lines = [service_status(service, s) for service in SERVICES.values()]
    healthy = all(" healthy " in line for line in lines)
    report: dict[str, object] = {"services": lines}
    if healthy:
        topics = (s.features_topic, s.predictions_topic, s.dead_letter_topic)
        report["topics"] = [topic_stats(s, t) for t in topics]
        report["ray"] = ray_resources(s)
        report["flink"] = flink_jobs(s)
        report["realtime"] = live_view(s).as_dict()
        report["runs"] = [asdict(r) for r in list_runs(s, 5)]
        report["functions"] = functions_admin.summary(s)
    report["links"] = links(s)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_status(report)
    while healthy and watch > 0:  # until interrupted
        time.sleep(watch)
        view = live_view(s, window_s=watch).as_dict()
        typer.echo(json.dumps(view) if as_json else _live_line(view))
    raise typer.Exit(0 if healthy else 1)


def _live_line(view: dict) -> str:
    latency = view["latency_ms"]
    return (
        f"realtime: raw in {view['raw_events_per_s']}/s, predictions {view['predictions_per_s']}/s,"
        f" lag flink {view['flink_lag']} lake {view['lake_lag']} consumers {view['consumer_lag']},"
        " raw event -> "
        f"prediction p50 {latency.get('p50', '-')} p99 {latency.get('p99', '-')} "
        f"max {latency.get('max', '-')} ms (last {view['window_s']:g} s)"
    )


@app.command("demo")
def demo(
    rows: int = typer.Option(2000, help="Valid raw rows to write."),
    malformed: int = typer.Option(70, help="Malformed raw rows to write."),
) -> None:
    """The whole pipeline as deployment runs, with a reconciled summary (exit 1 on mismatch)."""
    from mlplatform.ops.demo import main

    raise typer.Exit(main(["--rows", str(rows), "--malformed", str(malformed)]))


if __name__ == "__main__":
    app()
