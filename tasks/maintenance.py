"""Prefect task around table maintenance (mlplatform/maintenance/tables.py) and its report."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from mlplatform.maintenance.tables import TableReport, maintain
from mlplatform.settings import Settings


def maintenance_rows(reports: list[TableReport]) -> list[dict[str, object]]:
    """One artifact row per table: files and bytes before and after, what was done, seconds."""
    return [report.as_row() for report in reports]


@task(name="maintain-tables")
def maintain_tables(
    settings: Settings, tables: list[str] | None = None, full: bool = False
) -> list[TableReport]:
    """Compact, expire and clean the tables; publish the summary artifact."""
    reports = maintain(settings, tables, full)
    create_table_artifact(
        key="table-maintenance",
        table=maintenance_rows(reports),
        description="Table maintenance (scope: the partitions worked on): data files and bytes "
        "before/after, snapshots expired, orphan files removed, seconds",
    )
    return reports
