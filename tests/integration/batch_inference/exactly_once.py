"""Checks of exactly-once batch inference that the batch and scale-out tests share: an
independent read of a run's predictions, one prediction per input row, and racing committers
and run openers."""

from __future__ import annotations

import time
from collections import Counter

import pandas as pd
import pyarrow as pa
from pyiceberg.expressions import EqualTo

from checkpoints.store import CheckpointStore, UnitPlan
from mlplatform.connectors.iceberg_tables import ensure_tables, load_table
from mlplatform.inference.batch.commit import commit_units, committed_units, disable_auto_retry
from mlplatform.inference.batch.unit_files import UnitFiles, write_data_files
from mlplatform.settings import Settings
from tests.helpers import run_together


def predictions_of(s: Settings, run_id: str) -> pd.DataFrame:
    """An independent read: the predictions table's rows of one run, through PyIceberg."""
    table = load_table(s, s.predictions_table)
    return table.scan(row_filter=EqualTo("run_id", run_id)).to_pandas()


def assert_exactly_once(s: Settings, run_id: str, snapshot_id: int | None = None) -> pd.DataFrame:
    features = load_table(s, s.features_table).scan(snapshot_id=snapshot_id).to_pandas()
    rows = predictions_of(s, run_id)
    counts = Counter(rows[s.key_column])
    doubled = [k for k, n in counts.items() if n > 1]
    missing = set(features[s.key_column]) - set(counts)
    assert not doubled, f"{len(doubled)} keys predicted more than once, e.g. {doubled[:3]}"
    assert not missing, f"{len(missing)} keys never predicted, e.g. {sorted(missing)[:3]}"
    assert len(rows) == len(features)
    names = [s.label_names[i] for i in rows["class_index"]]
    assert names == list(rows["label"]), "a label is not its class index's name"
    return rows


def race_commits(s: Settings) -> None:
    """Four writers commit overlapping units of one run at the same moment: each unit lands once."""
    run_id = f"race-{time.time_ns()}"
    table = disable_auto_retry(ensure_tables(s).load_table(s.table_id(s.predictions_table)))
    rows = pd.DataFrame(
        {
            s.key_column: [f"k{i}" for i in range(10)],
            "class_index": 0,
            "label": "setosa",
            "probabilities": [[1.0, 0.0, 0.0]] * 10,
            "model_version": 1,
            "run_id": run_id,
            "input_snapshot_id": 0,
            "reason": None,  # every row predicted, none refused
        }
    )
    data = pa.Table.from_pandas(rows, schema=table.schema().as_arrow(), preserve_index=False)

    def commit(unit: int) -> int | None:
        own = load_table(s, s.predictions_table)  # each writer its own table object and files
        parts = {u: UnitFiles(10, write_data_files(own.metadata, own.io, data)) for u in (unit, 99)}
        return commit_units(own, run_id, parts)[0]

    # A committer that raises or hangs fails the test (run_together).
    snapshots = run_together(commit, [(1,), (1,), (2,), (2,)], timeout_s=120)
    table.refresh()
    assert committed_units(table, run_id) == {1: 10, 2: 10, 99: 10}
    assert len(predictions_of(s, run_id)) == 30  # units 1, 2 and 99 once each
    assert len([x for x in snapshots if x is not None]) == 2, snapshots


def race_open_run(s: Settings) -> None:
    """Four processes' worth of threads open the same new job at once: one run, planned once."""
    store = CheckpointStore(s.resolved_database_url)
    plan = [UnitPlan(i, "f.parquet", i, 1, 10) for i in range(5)]
    key = f"race-{time.time_ns()}"

    def open_run() -> tuple[str, bool]:
        run, resumed = store.open_run(
            key,
            None,
            lambda: plan,
            kind="test",
            dataset="d",
            snapshot_id=1,
            model_version=1,
            mode="fused",
        )
        return run.run_id, resumed

    opened = run_together(open_run, [()] * 4, timeout_s=60)
    assert len({run_id for run_id, _ in opened}) == 1, opened
    assert sorted(resumed for _, resumed in opened) == [False, True, True, True]
    assert len(store.units(opened[0][0])) == 5
