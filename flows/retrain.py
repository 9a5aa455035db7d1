"""Flow: retrain on a pinned Iceberg snapshot and promote if not worse, or roll back."""

from __future__ import annotations

import sys
from dataclasses import asdict

from prefect import flow
from prefect.states import Cancelled, State

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.training import Skipped, roll_back, train_and_decide

# The exit status of `python -m flows.retrain` when another retrain was running (sysexits.h's
# EX_TEMPFAIL: try again later).
EXIT_ANOTHER_RETRAIN_RUNNING = 75


@flow(name="retrain", log_prints=True)
def retrain(
    snapshot_id: int | None = None, rollback_to: int | None = None, model: str | None = None
) -> dict | State:
    """Train the candidate grid on a pinned snapshot; promote the best if it is not worse.

    One retrain at a time: a run that finds another one going ends Cancelled, with the reason,
    without training.

    Args:
        snapshot_id: the Iceberg features snapshot to train on; default: the latest.
        rollback_to: skip training and make this earlier model version the champion again.
        model: the registry's model by name; default: MLP_MODEL_NAME, else the dataset's name.
    """
    settings = get_settings().for_model(model)
    configure_logging(settings)
    if rollback_to is not None:
        version = roll_back(settings, rollback_to)
        print(f"retrain: rolled back to model version {version}")
        return {"decision": "rollback", "champion": version}
    result = train_and_decide(settings, snapshot_id)
    if isinstance(result, Skipped):
        return Cancelled(message=result.reason)
    print(
        f"retrain: {result.decision} version {result.best_version}: {result.reason} "
        f"({result.rows_used} of {result.rows_available} rows)"
    )
    return asdict(result)


if __name__ == "__main__":
    final = retrain(return_state=True)
    if final.is_cancelled():
        print(final.message, file=sys.stderr)
        sys.exit(EXIT_ANOTHER_RETRAIN_RUNNING)
    sys.exit(0 if final.is_completed() else 1)
