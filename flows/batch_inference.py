"""Flow: Ray Data batch inference over an Iceberg snapshot into the predictions table."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from prefect import flow

from mlplatform.inference.batch.request import BatchRequest
from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.inference import batch_predict


@flow(name="batch-inference", log_prints=True)
def batch_inference(
    resume_run_id: str | None = None,
    model_version: int | None = None,
    snapshot_id: int | None = None,
    row_filter: str | None = None,
    mode: Literal["fused", "separated"] | None = None,
    incremental: bool = False,
    model: str | None = None,
) -> dict:
    """Predict every row of a features snapshot exactly once (incremental: the rows appended
    since the last run of the same model and filter).

    An unfinished run over the same snapshot, model and filter is continued automatically.

    Args:
        resume_run_id: resume this checkpointed run (mlp runs list); failed units get new attempts.
        model_version: the registry version to predict with; default: the champion.
        snapshot_id: the Iceberg features snapshot to read; default: the latest.
        row_filter: only rows matching this Iceberg filter, e.g. petal_length > 2.5; default: all.
        mode: fused (model in Ray Data actors) or separated (Ray Serve); default MLP_BATCH_MODE.
        incremental: only the rows appended since the last run of this model and filter (its
            unfinished run is continued first; every row when none ran, or rows were rewritten).
        model: the registry's model by name; default: MLP_MODEL_NAME, else the dataset's name.
    """
    s = get_settings().for_model(model)
    configure_logging(s)
    request = BatchRequest(
        resume_run_id=resume_run_id,
        model_version=model_version,
        snapshot_id=snapshot_id,
        row_filter=row_filter,
        mode=mode,
        incremental=incremental,
    )
    result = batch_predict(s, request)
    print(f"batch-inference: {result}")
    return asdict(result)


if __name__ == "__main__":
    batch_inference()
