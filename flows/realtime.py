"""Flow: the whole real-time path in one run, raw events to predictions, and its live view.

Starts the Flink stream job (and the session cluster) unless it runs, then the stream actors on
Ray, and publishes the live view (rates, lag, raw event -> prediction latency) as an artifact
that updates while the run goes on. The job keeps running after the run ends unless `stop_job`.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.runtime import flow_run

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.inference import stream_predict
from tasks.preprocess import start_stream_job, stop_stream_job
from tasks.realtime import live_artifact


@flow(name="realtime", log_prints=True)
def realtime(
    timeout_s: float | None = None,
    model: str | None = None,
    view_every_s: float = 10.0,
    stop_job: bool = False,
) -> dict:
    """Run the stream job and the stream actors together, with a live view.

    Args:
        timeout_s: stop the actors after this many seconds; null: run until cancelled.
        model: the registry's model by name; default: MLP_MODEL_NAME, else the dataset's name.
        view_every_s: publish the live view artifact this often (each over the last as long).
        stop_job: stop the Flink stream job with a savepoint when the actors stop.
    """
    s = get_settings().for_model(model)
    configure_logging(s)
    report: dict = {"job": start_stream_job(s, str(flow_run.id or "adhoc"))}
    print(f"realtime: stream job {report['job']}")
    with live_artifact(s, view_every_s):
        report["stream"] = asdict(stream_predict(s, None, timeout_s, None))
    if stop_job:
        report["stopped"] = asdict(stop_stream_job(s))
    print(f"realtime: {report}")
    return report


if __name__ == "__main__":
    realtime()
