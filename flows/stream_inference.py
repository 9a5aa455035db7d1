"""Flow: Ray actors consume the Pulsar features topic and publish predictions."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.inference import stream_predict


@flow(name="stream-inference", log_prints=True)
def stream_inference(
    max_messages: int | None = None,
    timeout_s: float | None = 60.0,
    model_version: int | None = None,
    model: str | None = None,
) -> dict:
    """Run the stream consumers until `max_messages` are predicted or `timeout_s` passes.

    With neither, it runs until the flow run is cancelled (the `continuous` deployment); what it
    had not written yet is redelivered to the next run.

    Args:
        max_messages: stop after this many predictions; default: no limit.
        timeout_s: stop after this many seconds; null: run until cancelled.
        model_version: pin this registry version; default: follow the champion as it changes.
        model: the registry's model by name; default: MLP_MODEL_NAME, else the dataset's name.
    """
    s = get_settings().for_model(model)
    configure_logging(s)
    result = stream_predict(s, max_messages, timeout_s, model_version)
    print(f"stream-inference: {result}")
    return asdict(result)


if __name__ == "__main__":
    stream_inference()
