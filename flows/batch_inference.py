"""Flow: Ray Data batch inference over an Iceberg snapshot into the predictions table."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.inference import batch_predict


@flow(name="batch-inference", log_prints=True)
def batch_inference(
    resume_run_id: str | None = None,
    model_version: int | None = None,
    snapshot_id: int | None = None,
) -> dict:
    """Predict every row of a features snapshot exactly once.

    An unfinished run over the same snapshot and model is continued automatically.

    Args:
        resume_run_id: continue this checkpointed run (mlp runs list shows them).
        model_version: the registry version to predict with; default: the champion.
        snapshot_id: the Iceberg features snapshot to read; default: the latest.
    """
    configure_logging(get_settings())
    result = batch_predict(get_settings(), resume_run_id, model_version, snapshot_id)
    print(f"batch-inference: {result}")
    return asdict(result)


if __name__ == "__main__":
    batch_inference()
