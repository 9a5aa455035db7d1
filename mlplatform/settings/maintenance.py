"""Settings of table maintenance: which data files are small, how long snapshots and unreferenced
files are kept (mlplatform/maintenance/tables.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MaintenanceSettings(BaseModel):
    """What the table-maintenance flow compacts, expires and removes."""

    # Data files smaller than this are compacted: a partition's small files become one file.
    compaction_small_file_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Small files are merged in groups of at most this many bytes: each group becomes one file,
    # read whole into memory first (a few times its size on disk).
    compaction_group_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    # A size tier of a partition (files up to 1 MiB, then each factor of 4) is merged once it
    # holds this many small files: a run rewrites what is new, not its earlier merges.
    compaction_min_files: int = Field(default=4, ge=2)
    # Snapshots older than this are expired (never the current one, nor one a run still needs).
    snapshot_retention_hours: float = Field(default=168.0, ge=0)
    # A file no retained snapshot references is removed once older than this: a younger one
    # may be a writer's output that is not committed yet.
    orphan_min_age_hours: float = Field(default=24.0, ge=0)
    # A nightly run maintains the partitions of the last this many days of a date-partitioned
    # table (the features table): its cost follows the new data, not the lake. A whole-table
    # run (the flow's `full`, weekly by default) does the older partitions; 0: always whole.
    maintenance_window_days: int = Field(default=7, ge=0)
    # Incremental batch-inference lineages with a run in this many days hold back compaction of
    # the features rows they have not predicted yet; an older lineage's next run predicts
    # every row again (mlplatform/inference/batch/increments.py).
    maintenance_lineage_days: float = Field(default=30.0, gt=0)
