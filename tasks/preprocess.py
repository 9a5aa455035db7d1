"""Prefect task around the Flink preprocessing job."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from mlplatform.preprocess import PreprocessResult, preprocess
from mlplatform.settings import Settings
from tasks.artifacts import publish_summary


@task(name="run-flink-preprocess", retries=1, retry_delay_seconds=10)
def run_preprocess(settings: Settings) -> PreprocessResult:
    """Run the PyFlink job over the landing folder; publish its counts."""
    result = preprocess(settings, run_id=str(flow_run.id or "adhoc"))
    publish_summary("preprocess-summary", "Flink preprocessing", result.as_dict())
    return result
