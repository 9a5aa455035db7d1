"""Prefect artifacts shared by the tasks: a summary table per run."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_table_artifact


def publish_summary(key: str, title: str, summary: dict[str, Any]) -> None:
    """One table artifact, a row per figure, so the Prefect UI shows what the run did."""
    rows = [{"figure": name, "value": str(value)} for name, value in summary.items()]
    create_table_artifact(key=key, table=rows, description=title)
