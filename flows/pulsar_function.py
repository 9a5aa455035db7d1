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
    name: str,
    action: Literal["create", "update", "restart", "delete", "status"] = "status",
    config: dict[str, Any] | None = None,
    tenant: str = "public",
    namespace: str = "default",
) -> dict:
    """Manage one Pulsar Function on the Ray runtime.

    Args:
        name: the function's name (or tenant/namespace/name).
        action: create, update (changes only the keys given), restart, delete, or status.
        config: the function's configuration, pulsar-admin's flags in snake_case: py, classname,
            inputs, output, user_config, parallelism, processing_guarantees, window_length_count,
            ... Secrets are given by name only (`secrets`: name -> settings field).
    """
    configure_logging(get_settings())
    fqfn = fqfn_of(name, tenant, namespace)
    result = apply_function_action(get_settings(), action, fqfn, config or {})
    print(f"pulsar-function: {action} {fqfn} -> {result}")
    return result


if __name__ == "__main__":
    pulsar_function("word-count")
