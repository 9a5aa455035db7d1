"""Prefect tasks around batch and stream inference."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from mlplatform.batch_inference import BatchResult, run_batch_inference
from mlplatform.settings import Settings
from mlplatform.stream_inference import StreamResult, run_stream_inference
from tasks.artifacts import publish_summary


@task(name="ray-data-batch-inference")
def batch_predict(
    settings: Settings,
    resume_run_id: str | None = None,
    model_version: int | None = None,
    snapshot_id: int | None = None,
) -> BatchResult:
    """Predict a features snapshot with Ray Data; progress shown as it commits."""
    progress = create_progress_artifact(progress=0.0, description="rows predicted")

    def report(done: int, total: int) -> None:
        update_progress_artifact(progress, progress=100.0 * done / max(total, 1))

    result = run_batch_inference(
        settings,
        run_id=str(flow_run.id) if flow_run.id else None,
        resume_run_id=resume_run_id,
        model_version=model_version,
        snapshot_id=snapshot_id,
        on_progress=report,
    )
    update_progress_artifact(progress, progress=100.0)
    publish_summary("batch-inference-summary", "Batch inference", result)
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
