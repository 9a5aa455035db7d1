"""Prefect task around the Flink preprocessing job, and the events it emits."""

from __future__ import annotations

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import State

from infra.flink_cluster import healthy, start_cluster
from mlplatform.preprocess.batch import PreprocessResult, preprocess
from mlplatform.preprocess.landing_files import IncompatibleSchemaError
from mlplatform.preprocess.stream import start_stream, stop_stream, stream_result, stream_settings
from mlplatform.settings import Settings
from mlplatform.training.retrain import rows_since_training
from tasks.artifacts import publish_preprocess_report

RETRAIN_DUE_EVENT = "mlplatform.features.retrain-due"
APPENDED_EVENT = "mlplatform.features.appended"


def _retry_unless_incompatible(task: Task, task_run: TaskRun, state: State) -> bool:
    """A file set aside for an incompatible schema fails the run: a retry would process the
    rest of the files and hide the error."""
    return not isinstance(state.data, IncompatibleSchemaError)


@task(
    name="run-flink-preprocess",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_unless_incompatible,
)
def run_preprocess(settings: Settings) -> PreprocessResult:
    """Run the PyFlink job over the landing folder; publish its report."""
    result = preprocess(settings, run_id=str(flow_run.id or "adhoc"))
    publish_preprocess_report(result)
    return result


@task(name="start-flink-stream")
def start_stream_job(settings: Settings, run_id: str) -> dict:
    """Start the stream job (resuming from the last savepoint), and the session cluster first
    when it is not up."""
    s = stream_settings(settings)
    if not healthy(s):
        print(start_cluster(s))
    return start_stream(s, run_id)


@task(name="stop-flink-stream")
def stop_stream_job(settings: Settings) -> PreprocessResult:
    """Stop the stream job with a savepoint; publish the report of the run it was."""
    stop_stream(settings)
    result = stream_result(settings)
    publish_preprocess_report(result)
    return result


@task(name="announce-new-features")
def announce(settings: Settings, result: PreprocessResult) -> int:
    """Emit an event per run that appended rows; a retrain-due event once enough rows arrived
    since training.

    Triggers in prefect.yaml listen: batch-inference/incremental for the appended event, the
    retrain deployment for the retrain-due one.
    """
    resource = {
        "prefect.resource.id": f"mlplatform.table.{settings.table_id(settings.features_table)}"
    }
    new_rows = rows_since_training(settings)
    payload = {"rows_added": result.features_rows, "rows_since_training": new_rows}
    if result.features_rows > 0:
        emit_event(APPENDED_EVENT, resource=resource, payload=payload)
        if new_rows >= settings.retrain_min_new_rows:
            emit_event(RETRAIN_DUE_EVENT, resource=resource, payload=payload)
    return new_rows
