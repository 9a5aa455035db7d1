"""Step 3 of the checkpoint protocol (see checkpoints): commit units of predictions (data files the
workers wrote: inference.batch.unit_files) to Iceberg at most once, with the run and its units in
the snapshot summary."""

from __future__ import annotations

import json
import time

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from mlplatform.connectors.iceberg_tables import transaction
from mlplatform.inference.batch.unit_files import UnitFiles

RUN_KEY, UNITS_KEY = "mlp.run_id", "mlp.units"
# PyIceberg retries a failed commit by re-applying the append on the new table state, which would
# defeat the compare-and-set below; this writer retries itself, after checking the summaries.
NO_AUTO_RETRY = {"commit.retry.num-retries": "0"}


def disable_auto_retry(table: Table) -> Table:
    if table.properties.get("commit.retry.num-retries") != "0":
        with table.transaction() as transaction:
            transaction.set_properties(NO_AUTO_RETRY)
    return table


def committed_units(table: Table, run_id: str) -> dict[int, int]:
    """{unit: rows} of every unit of the run found in the table's snapshot summaries."""
    units: dict[int, int] = {}
    for snapshot in table.snapshots():
        summary = snapshot.summary
        if summary is not None and summary.get(RUN_KEY) == run_id:
            units.update({int(k): int(v) for k, v in json.loads(summary[UNITS_KEY]).items()})
    return units


def commit_units(
    table: Table, run_id: str, parts: dict[int, UnitFiles], tries: int = 20
) -> tuple[int | None, dict[int, int]]:
    """Commit the data files of the units not yet committed for the run, in one snapshot;
    (snapshot id, {unit: rows}). The files were written by the workers (unit_files).

    Returns (None, {}) when every unit was already committed (by an earlier or a concurrent run):
    the caller deletes the files of units it does not find in the result.
    """
    for attempt in range(tries):
        if attempt:  # the first try is on the table as this writer last saw it: if another
            table.refresh()  # commit came since, the catalog's compare-and-set refuses ours
        done = committed_units(table, run_id)
        todo = {unit: part for unit, part in parts.items() if unit not in done}
        if not todo:
            return None, {}
        rows = {unit: part.rows for unit, part in todo.items()}
        summary = {RUN_KEY: run_id, UNITS_KEY: json.dumps(rows, separators=(",", ":"))}
        try:
            with transaction(table) as tx:
                update = tx.update_snapshot(snapshot_properties=summary)
                with update.fast_append() as append:
                    for part in todo.values():
                        for file in part.files:
                            append.append_data_file(file)
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))  # a concurrent commit won; check again
            continue
        snapshot = table.current_snapshot()
        return (snapshot.snapshot_id if snapshot else None), rows
    raise CommitFailedException(f"run {run_id}: {tries} commits in a row lost to other writers")
