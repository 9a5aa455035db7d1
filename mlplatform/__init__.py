"""A workflow-orchestrated batch and stream ML data platform: Prefect, Flink, Pulsar, Iceberg,
Ray."""

import os as _os

# On one machine every Ray server listens on loopback only. `ray start` and `ray.init` would
# otherwise swap a loopback address for the machine's outward one; Ray's single-machine switch
# keeps it, and must be set before ray is first imported. A remote MLP_RAY_ADDRESS leaves it off.
if _os.environ.get("MLP_RAY_ADDRESS", "127.0.0.1").startswith(("127.", "localhost", "local")):
    _os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
