"""Prefect artifacts shared by the tasks: a summary table per run, and the preprocess report."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

if TYPE_CHECKING:
    from mlplatform.preprocess.batch import PreprocessResult


def publish_summary(key: str, title: str, result: Any) -> None:
    """One table artifact, a row per field of a result dataclass, for the Prefect UI."""
    rows = [{"figure": name, "value": str(value)} for name, value in asdict(result).items()]
    create_table_artifact(key=key, table=rows, description=title)


def preprocess_markdown(result: PreprocessResult) -> str:
    """A preprocess run for the Prefect UI: its counts, rejections by reason and the Flink job."""
    job = f"[{result.job_id}]({result.flink_job_url})" if result.flink_job_url else result.job_id
    figures = [
        ("files", result.files),
        ("rows read", result.rows_read),
        ("rows written (Iceberg features + Pulsar topic)", result.features_rows),
        ("already ingested (skipped)", result.already_ingested),
        ("rows quarantined", result.quarantined_rows),
        ("features snapshot", result.features_snapshot_id or "-"),
        ("Flink job", job or "- (no files)"),
    ]
    if result.flink_job_url:
        figures.append(("Flink UI", f"[{result.flink_job_url}]({result.flink_job_url})"))
    lines = ["## Flink preprocessing", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in figures]
    lines += ["", "### Quarantined by reason", ""]
    if result.quarantined_by_reason:
        lines += ["| reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in result.quarantined_by_reason.items()]
    else:
        lines.append("No row was quarantined.")
    return "\n".join(lines) + "\n"


def publish_preprocess_report(result: PreprocessResult) -> None:
    """The preprocess run's markdown artifact (key preprocess-summary)."""
    create_markdown_artifact(
        key="preprocess-summary",
        markdown=preprocess_markdown(result),
        description="Flink preprocessing: rows read, written, quarantined by reason",
    )
