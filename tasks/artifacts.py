"""Prefect artifacts shared by the tasks: a summary table per run."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect.artifacts import create_table_artifact


def publish_summary(key: str, title: str, result: Any) -> None:
    """One table artifact, a row per field of a result dataclass, for the Prefect UI."""
    rows = [{"figure": name, "value": str(value)} for name, value in asdict(result).items()]
    create_table_artifact(key=key, table=rows, description=title)
