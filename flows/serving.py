"""Flow: start, stop or report the model's HTTP API on Ray Serve.

The application lives in the Ray cluster at settings.ray_address, so it keeps serving after
this flow run (a subprocess of the worker) ends.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from prefect import flow

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.serving import apply_serving_action


@flow(name="serving", log_prints=True)
def serving(
    action: Literal["start", "stop", "status"] = "status",
    model_version: int | None = None,
    model: str | None = None,
) -> dict:
    """Manage the model API on Ray Serve.

    Args:
        action: start (deploy, or redeploy with new settings), stop, or status.
        model_version: with start, pin this registry version; default: follow the champion.
        model: the registry's model by name; default: MLP_MODEL_NAME, else the dataset's name.
    """
    s = get_settings().for_model(model)
    configure_logging(s)
    state = apply_serving_action(s, action, model_version)
    print(f"serving: {state.action} -> {state.status} at {state.address}: {state.detail}")
    return asdict(state)


if __name__ == "__main__":
    serving()
