"""Prefect tasks around batch and stream inference."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from prefect import task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.results import STEPS, BatchResult, step_costs
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.inference.stream.runner import StreamResult, run_stream_inference
from mlplatform.settings import Settings
from tasks.artifacts import publish_summary


def covered(result: BatchResult) -> str:
    """The snapshot range a run covered, and why."""
    since = result.since_snapshot_id
    span = (
        f"({since}, {result.snapshot_id}]" if since is not None else f"all of {result.snapshot_id}"
    )
    return f"{span}: {result.basis}"


def batch_summary_rows(result: BatchResult, flow_start_s: float | None = None) -> list[dict]:
    """The final table: the run's figures, the fixed steps' times, then one row per failed unit.
    flow_start_s: seconds from the flow run's scheduled start to the run's call."""
    rows = [
        {"figure": "run id", "value": result.run_id},
        {"figure": "mode", "value": result.mode},
        {"figure": "resumed", "value": result.resumed},
        {"figure": "input snapshot", "value": result.snapshot_id},
        {"figure": "rows covered", "value": covered(result)},
        {"figure": "model version", "value": result.model_version},
        {"figure": "units", "value": result.units_total},
        {"figure": "input rows", "value": result.input_rows},
        {"figure": "units skipped (committed before)", "value": result.skipped_units},
        {"figure": "rows skipped (committed before)", "value": result.skipped_rows},
        {"figure": "rows predicted now", "value": result.predicted_rows},
        {"figure": "of which refused (broke the dataset's rules)", "value": result.refused},
        {"figure": "Iceberg commits", "value": result.commits},
        {"figure": "seconds", "value": round(result.seconds, 1)},
        {"figure": "rows/s", "value": round(result.rows_per_s)},
        {"figure": "failed units", "value": len(result.failed_units)},
    ]
    if flow_start_s is not None:
        rows.append(
            {"figure": "step: flow start (s, scheduled -> batch call)", "value": flow_start_s}
        )
    costs = step_costs(result.steps)
    rows += [
        {"figure": f"step: {name} (s; {STEPS[name]})", "value": cost}
        for name, cost in costs.items()
    ]
    rows += [
        {"figure": f"refused: {reason}", "value": count}
        for reason, count in sorted(result.refused_rows.items())
    ]
    rows += [
        {"figure": f"failed unit {f.unit} ({f.rows} rows, {f.attempts} attempts)", "value": f.error}
        for f in result.failed_units
    ]
    return rows


@task(name="ray-data-batch-inference")
def batch_predict(settings: Settings, request: BatchRequest) -> BatchResult:
    """Predict a features snapshot with Ray Data; progress from the checkpoint tables."""
    progress = create_progress_artifact(progress=0.0, description="units committed")

    def report(units_done: int, units_total: int) -> None:
        update_progress_artifact(progress, progress=100.0 * units_done / max(units_total, 1))

    if request.run_id is None and flow_run.id:  # a new run is named after its flow run
        request = replace(request, run_id=str(flow_run.id))
    scheduled = flow_run.scheduled_start_time
    flow_start_s = (
        round((datetime.now(UTC) - scheduled).total_seconds(), 1) if flow_run.id else None
    )
    result = run_batch_inference(settings, request, on_progress=report)
    update_progress_artifact(progress, progress=100.0)
    create_table_artifact(
        key="batch-inference-summary",
        table=batch_summary_rows(result, flow_start_s),
        description="Batch inference: rows, throughput, fixed steps, skipped on resume, failures",
    )
    return result


@task(name="ray-actors-stream-inference")
def stream_predict(
    settings: Settings,
    max_messages: int | None,
    timeout_s: float | None,
    model_version: int | None,
) -> StreamResult:
    """Consume the features topic with Ray actors until N messages or T seconds."""
    result = run_stream_inference(settings, max_messages, timeout_s, model_version)
    publish_summary("stream-inference-summary", "Stream inference", result)
    return result
