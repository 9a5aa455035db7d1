"""Flow: train on a pinned Iceberg snapshot, evaluate, register, promote if not worse."""

from __future__ import annotations

from prefect import flow

from mlplatform.settings import get_settings
from tasks.training import train_model


@flow(name="retrain", log_prints=True)
def retrain(snapshot_id: int | None = None) -> dict:
    """Retrain the model; `snapshot_id` pins the features snapshot (default: the latest)."""
    result = train_model(get_settings(), snapshot_id)
    print(f"retrain: {result}")
    return result.as_dict()


if __name__ == "__main__":
    retrain()
