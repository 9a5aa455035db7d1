"""Prefect task around the serving application's lifecycle, with its status artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from mlplatform.inference.serving.deployment import ServingState, manage_serving
from mlplatform.settings import Settings


def status_markdown(state: ServingState) -> str:
    """The state as a small markdown table, with the API's address and its docs."""
    version = "-" if state.model_version is None else f"v{state.model_version}"
    rows = [
        ("action", state.action),
        ("status", state.status),
        ("address", state.address),
        ("docs", f"{state.address}/docs"),
        ("model version", version),
        ("detail", state.detail),
    ]
    lines = ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)


@task(name="ray-serve-model-api")
def apply_serving_action(
    settings: Settings, action: str, model_version: int | None = None
) -> ServingState:
    """Start, stop or report the model API on Ray Serve; publish its status."""
    state = manage_serving(settings, action, model_version)
    create_markdown_artifact(
        key="serving-status", markdown=status_markdown(state), description="Model API on Ray Serve"
    )
    return state
