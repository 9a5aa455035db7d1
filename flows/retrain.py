"""Flow: retrain on a pinned Iceberg snapshot and promote if not worse, or roll back."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.training import roll_back, train_and_decide


@flow(name="retrain", log_prints=True)
def retrain(snapshot_id: int | None = None, rollback_to: int | None = None) -> dict:
    """Train the candidate grid on a pinned snapshot; promote the best if it is not worse.

    Args:
        snapshot_id: the Iceberg features snapshot to train on; default: the latest.
        rollback_to: skip training and make this earlier model version the champion again.
    """
    settings = get_settings()
    configure_logging(settings)
    if rollback_to is not None:
        version = roll_back(settings, rollback_to)
        print(f"retrain: rolled back to model version {version}")
        return {"decision": "rollback", "champion": version}
    result = train_and_decide(settings, snapshot_id)
    print(f"retrain: {result.decision} version {result.best_version}: {result.reason}")
    return asdict(result)


if __name__ == "__main__":
    retrain()
