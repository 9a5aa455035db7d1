"""What an operator looks at: checkpointed runs, the quarantine, topics, Ray, links.

Plain functions returning plain data; `mlplatform.ops.cli` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from checkpoints.store import FAILED, CheckpointStore
from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.settings import Settings


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    kind: str
    status: str
    mode: str
    snapshot_id: int
    model_version: int
    rows_total: int
    units_total: int
    units_done: int
    units_failed: int
    rows_done: int
    started_at: str
    error: str | None


def list_runs(s: Settings, limit: int = 20) -> list[RunProgress]:
    """The newest checkpointed runs with how far each got."""
    store = CheckpointStore(s.resolved_database_url)
    runs = []
    for run in store.list_runs(limit):
        units, rows = store.progress(run.run_id)
        failed = len(store.units(run.run_id, FAILED))
        runs.append(
            RunProgress(
                run.run_id,
                run.kind,
                run.status,
                run.mode,
                run.snapshot_id,
                run.model_version,
                run.rows_total,
                run.units_total,
                units,
                failed,
                rows,
                run.started_at.isoformat(timespec="seconds"),
                run.error,
            )
        )
    return runs


def quarantine_summary(s: Settings, limit: int = 10) -> tuple[dict[str, int], list[dict]]:
    """Quarantined rows counted by reason, and the `limit` newest rows."""
    frame = load_table(s, s.quarantine_table).scan().to_pandas()
    counts = {str(k): int(v) for k, v in frame["reason"].value_counts().items()}
    newest = frame.sort_values("quarantined_at", ascending=False).head(limit)
    newest["quarantined_at"] = newest["quarantined_at"].astype(str)
    return counts, newest.to_dict("records")


def ray_resources(s: Settings) -> dict[str, Any]:
    """The Ray cluster's nodes and its total and available CPUs and memory."""
    import ray

    from mlplatform.connectors.ray_runtime import connect

    connect(s)
    total, free = ray.cluster_resources(), ray.available_resources()
    return {
        "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        "cpus": total.get("CPU", 0.0),
        "cpus_free": free.get("CPU", 0.0),
        "object_store_gb": round(total.get("object_store_memory", 0.0) / 1e9, 2),
    }


def flink_jobs(s: Settings) -> dict[str, Any]:
    """The session cluster's jobs (MLP_FLINK_MODE=session); local mode runs one per flow run."""
    if s.flink_mode != "session":
        return {"mode": "local", "jobs": "a local mini-cluster per preprocess run"}
    try:
        response = httpx.get(f"{s.flink_rest_url}/jobs/overview", timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError as error:
        return {"mode": "session", "error": f"{s.flink_rest_url} did not answer: {error}"}
    jobs = [
        {"id": job["jid"], "name": job["name"], "state": job["state"]}
        for job in response.json()["jobs"]
    ]
    return {
        "mode": "session",
        "running": [j for j in jobs if j["state"] == "RUNNING"],
        "jobs": len(jobs),
    }


def links(s: Settings) -> dict[str, str]:
    """Where each engine's own dashboard is."""
    prefect_ui = s.prefect_api_url.removesuffix("/api")
    host = s.ray_address.rpartition(":")[0] or "127.0.0.1"
    return {
        "prefect_ui": prefect_ui,
        "ray_dashboard": f"http://{host}:{s.ray_dashboard_port}",
        "serve_docs": f"http://127.0.0.1:{s.serve_port}{s.serve_route_prefix.rstrip('/')}/docs",
        "pulsar_admin": f"{s.pulsar_admin_url}/admin/v2/clusters",
        "flink": s.flink_rest_url
        if s.flink_mode == "session"
        else "local mini-cluster per job: its web UI lives as long as the job",
    }
