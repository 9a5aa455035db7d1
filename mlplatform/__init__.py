"""A workflow-orchestrated batch and stream ML data platform: Prefect, Flink, Pulsar, Iceberg,
Ray."""

import os as _os

# On one machine every Ray server listens on loopback only. `ray start` and `ray.init` would
# otherwise swap a loopback address for the machine's outward one; Ray's single-machine switch
# keeps it, and must be set before ray is first imported. A remote MLP_RAY_ADDRESS leaves it off.
# Ray 2.60 also turns token auth on by itself once any local ray.init has written
# ~/.ray/auth_token; nodes and drivers that disagree on it cannot talk. On loopback the mode is
# set explicitly (off, as the servers are unreachable from outside); set RAY_AUTH_MODE=token to
# use it.
if _os.environ.get("MLP_RAY_ADDRESS", "127.0.0.1").startswith(("127.", "localhost", "local")):
    _os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    _os.environ.setdefault("RAY_AUTH_MODE", "disabled")
