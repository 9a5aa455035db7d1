"""Prefect task around a Pulsar Function's lifecycle on the Ray runtime, with its status."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from mlplatform.inference.stream import functions_admin
from mlplatform.inference.stream.function_spec import FunctionSpec
from mlplatform.settings import Settings


def status_markdown(fqfn: str, status: dict[str, Any]) -> str:
    """The function's status as a small markdown table."""
    rows = [
        ("function", fqfn),
        ("instances running", f"{status['numRunning']}/{status['numInstances']}"),
        ("processed", status["numSuccessfullyProcessed"]),
        ("user exceptions", status["numUserExceptions"]),
        ("backlog", status["backlog"]),
    ]
    lines = ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)


@task(name="pulsar-function")
def apply_function_action(
    settings: Settings, action: str, fqfn: str, config: dict[str, Any]
) -> dict[str, Any]:
    """Create, update, restart, delete or report a function; publish its status."""
    if action in ("create", "update"):
        tenant, namespace, name = fqfn.split("/")
        base = functions_admin.get(settings, fqfn).model_dump() if action == "update" else {}
        spec = FunctionSpec(
            **{**base, **config, "tenant": tenant, "namespace": namespace, "name": name}
        )
        (functions_admin.create if action == "create" else functions_admin.update)(settings, spec)
    elif action == "restart":
        functions_admin.restart(settings, fqfn)
    elif action == "delete":
        functions_admin.delete(settings, fqfn)
        return {"fqfn": fqfn, "deleted": True}
    status = functions_admin.status(settings, fqfn)
    create_markdown_artifact(
        key="pulsar-function-status",
        markdown=status_markdown(fqfn, status),
        description=f"Pulsar Function {fqfn} on Ray",
    )
    return status
