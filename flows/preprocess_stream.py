"""Flow: the Flink preprocessing job in stream mode, from the Pulsar raw-events topic.

The job runs on the Flink session cluster (started here when it is not up), so it keeps
running after a `start` run ends; `stop` stops it with a savepoint that the next `start`
resumes from. `run` does both around a bounded time (tests, the demo).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Literal

from prefect import flow
from prefect.runtime import flow_run

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.preprocess import start_stream_job, stop_stream_job


@flow(name="preprocess-stream", log_prints=True)
def preprocess_stream(
    action: Literal["start", "stop", "run"] = "run", run_for_s: float = 60.0
) -> dict:
    """Start, stop (with a savepoint), or run the stream preprocessing job for a while.

    Args:
        action: start (resume from the last savepoint), stop (savepoint and report), or run.
        run_for_s: with run, seconds between the start and the stop.
    """
    settings = get_settings()
    configure_logging(settings)
    report: dict = {}
    if action in ("start", "run"):
        report["start"] = start_stream_job(settings, str(flow_run.id or "adhoc"))
        print(f"preprocess-stream: started {report['start']}")
    if action == "run":
        time.sleep(run_for_s)
    if action in ("stop", "run"):
        report["stop"] = asdict(stop_stream_job(settings))
        print(f"preprocess-stream: stopped {report['stop']}")
    return report


if __name__ == "__main__":
    preprocess_stream()
