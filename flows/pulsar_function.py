"""Flow: create, update, restart, delete or report a Pulsar Function running on Ray.

What `mlp functions` does, for users who drive everything from Prefect. The function's instances
live in the Ray cluster (detached actors), so they keep running after this flow run ends.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from mlplatform.inference.stream.functions_admin import fqfn_of
from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.functions import apply_function_action


@flow(name="pulsar-function", log_prints=True)
def pulsar_function(
    name: str | None = None,
    action: Literal["create", "update", "restart", "delete", "status"] = "status",
    config: dict[str, Any] | None = None,
    tenant: str = "public",
    namespace: str = "default",
) -> dict:
    """Manage one Pulsar Function on the Ray runtime.

    Args:
        name: the function's name (or tenant/namespace/name); required.
        action: create, update (changes only the keys given), restart, delete, or status.
        config: pulsar-admin's flags in snake_case (py, classname, inputs, output, ...).
        tenant: the function's tenant.
        namespace: the function's namespace.
    """
    if not name:
        raise ValueError("give the function's name (parameter name), e.g. word-count")
    configure_logging(get_settings())
    fqfn = fqfn_of(name, tenant, namespace)
    result = apply_function_action(get_settings(), action, fqfn, config or {})
    print(f"pulsar-function: {action} {fqfn} -> {result}")
    return result


if __name__ == "__main__":
    pulsar_function("word-count")
