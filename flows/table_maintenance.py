"""Flow: compact the lake's small data files, expire old snapshots, remove orphan files."""

from __future__ import annotations

from prefect import flow

from mlplatform.logs import configure_logging
from mlplatform.settings import get_settings
from tasks.maintenance import maintain_tables
from tasks.namespace_slot import one_run_per_namespace


@flow(name="table-maintenance", log_prints=True)
def table_maintenance(tables: list[str] | None = None, full: bool = False) -> list[dict]:
    """Maintain the namespace's tables, one run per namespace at a time.

    Args:
        tables: table names in the namespace; default: features, predictions, stream
            predictions and feature windows.
        full: whole tables; default: the partitions of the last MLP_MAINTENANCE_WINDOW_DAYS
            of the date-partitioned features table (unpartitioned tables are always whole).
    """
    settings = get_settings()
    configure_logging(settings)
    with one_run_per_namespace(settings, "maintenance"):
        reports = maintain_tables(settings, tables, full)
    for report in reports:
        print(
            f"table-maintenance: {report.table} ({report.scope}): {report.files_before} -> "
            f"{report.files_after} files, {report.snapshots_expired} snapshots expired, "
            f"{report.orphans_removed} orphan files removed"
        )
    return [report.as_row() for report in reports]
