"""Table maintenance on real Iceberg tables, real Ray and a real checkpoint database: readers see
the same rows before and after; compaction while the stream committer commits loses and doubles
nothing and its restart still drops what it has; expiry keeps what runs need; orphan removal
deletes only unreferenced files; the flow publishes its summary."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import ray
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from checkpoints.store import CheckpointStore
from flows.table_maintenance import table_maintenance
from mlplatform.connectors.iceberg_tables import ensure_tables, load_table, merged_sequence
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.batch.commit import commit_units, committed_units, disable_auto_retry
from mlplatform.inference.batch.unit_files import UnitFiles, write_data_files
from mlplatform.inference.stream.committer import Result, StreamCommitter, high_water_marks
from mlplatform.maintenance.tables import live_entries, maintain, referenced_files
from mlplatform.sample_data.synthetic_features import (
    append_features,
    feature_rows,
    features_table_rows,
)
from mlplatform.settings import Settings
from tests.helpers import module_settings, settings_env, settings_in_process

pytestmark = pytest.mark.integration


@pytest.fixture
def lake(isolated: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Tables and a database of the test's own; Ray connected."""
    s = module_settings(
        isolated, f"maint{abs(hash(request.node.name)) % 10_000}", stream_commit_interval_s=0.2
    )
    ensure_tables(s)
    connect(s)
    yield s


def _rows(s: Settings, name: str) -> list[tuple]:
    """Every row of the table, sorted: what any reader sees."""
    data = load_table(s, name).scan().to_arrow()
    return sorted(tuple(row.values()) for row in data.to_pylist())


def _results(s: Settings, seqs: range) -> list[Result]:
    """Stream results of producer p0, as the stream actors publish them."""
    return [
        Result(
            "p0",
            seq,
            json.dumps(
                {
                    s.key_column: f"k-{seq}",
                    "class_index": 1,
                    "label": "versicolor",
                    "probabilities": [0.1, 0.8, 0.1],
                    "model_version": 1,
                    "message_id": f"1:{seq}:0",
                    "predicted_at": datetime(2026, 12, 2, 12, 0, 0).isoformat(),
                }
            ).encode(),
        )
        for seq in seqs
    ]


def test_compaction_keeps_every_row_and_marks_its_snapshot(lake: Settings) -> None:
    s = lake
    for seed in range(4):
        append_features(s, 50, seed=seed)
    before = _rows(s, s.features_table)
    [report] = maintain(s, [s.features_table])
    assert (report.files_before, report.files_after, report.files_compacted) == (4, 1, 4)
    assert report.bytes_after < report.bytes_before
    assert _rows(s, s.features_table) == before
    current = load_table(s, s.features_table).current_snapshot()
    assert current is not None and merged_sequence(current) is not None
    [again] = maintain(s, [s.features_table])  # nothing small left to merge
    assert (again.files_before, again.files_compacted) == (1, 0)


def _append_dated(s: Settings, rows: int, seed: int, day: date) -> None:
    """One commit of `rows` feature rows ingested on `day` (its event-date partition)."""
    data = feature_rows(s, rows, seed)
    columns = {c: data[c] for c in [s.key_column, *s.feature_columns, s.label_column]}
    stamp = datetime.combine(day, datetime.min.time())
    columns["ingested_at"] = pa.array([stamp] * rows, pa.timestamp("us"))
    load_table(s, s.features_table).append(features_table_rows(s, columns))


def _plant_orphan(s: Settings, day: date) -> Path:
    """A Parquet file in `day`'s partition folder that no snapshot references, two days old."""
    location = load_table(s, s.features_table).location().removeprefix("file://")
    orphan = Path(location) / "data" / f"event_date={day.isoformat()}" / "orphan.parquet"
    orphan.write_bytes(b"not referenced")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(orphan, (two_days_ago, two_days_ago))
    return orphan


def test_a_nightly_run_keeps_to_its_window_and_a_full_run_does_the_rest(lake: Settings) -> None:
    """Small files and an orphan in today's partition and in one older than the window: the
    nightly run merges and removes today's only; the full run the older partition's too."""
    s = lake
    today = datetime.now(UTC).date()
    old = today - timedelta(days=s.maintenance_window_days + 30)
    for seed in range(4):
        _append_dated(s, 20, seed, old)
        _append_dated(s, 20, 10 + seed, today)
    recent_orphan, old_orphan = _plant_orphan(s, today), _plant_orphan(s, old)
    before = _rows(s, s.features_table)

    [nightly] = maintain(s, [s.features_table])
    assert nightly.scope == f"event_date >= {today - timedelta(days=s.maintenance_window_days)}"
    assert (nightly.files_before, nightly.files_compacted, nightly.files_after) == (8, 4, 5)
    assert (nightly.orphans_removed, recent_orphan.exists(), old_orphan.exists()) == (
        1,
        False,
        True,
    )
    assert _rows(s, s.features_table) == before

    [full] = maintain(s, [s.features_table], full=True)
    assert full.scope == "whole table"
    assert (full.files_compacted, full.files_after, full.orphans_removed) == (4, 2, 1)
    assert not old_orphan.exists()
    assert _rows(s, s.features_table) == before


def test_compaction_during_stream_commits_loses_and_doubles_nothing(lake: Settings) -> None:
    """A writer thread commits 40 batches through the committer while maintenance compacts the
    table over and over; then a new committer is handed every result again (a redelivery after
    a crash) and adds none."""
    s = lake
    committer = StreamCommitter.options(num_cpus=0).remote(s, s.stream_predictions_table)
    batches = [range(i * 25, (i + 1) * 25) for i in range(40)]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for seqs in batches:
                ray.get(committer.add.remote(_results(s, seqs), True), timeout=60)
        except BaseException as error:  # reported by the test below
            errors.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    compacted = 0
    try:
        while writer.is_alive():
            [report] = maintain(s, [s.stream_predictions_table])
            compacted += report.files_compacted
    finally:
        writer.join(timeout=120)
    assert not errors, errors
    assert compacted > 0  # compactions really ran between the commits
    expected = sorted(f"k-{seq}" for seqs in batches for seq in seqs)
    keys = load_table(s, s.stream_predictions_table).scan().to_arrow()[s.key_column]
    assert sorted(keys.to_pylist()) == expected
    assert high_water_marks(load_table(s, s.stream_predictions_table)) == {"p0": 999}
    ray.kill(committer)
    # Everything older than now expired, every unreferenced file removed: the marks stay.
    aggressive = s.model_copy(update={"snapshot_retention_hours": 0, "orphan_min_age_hours": 0})
    maintain(aggressive, [s.stream_predictions_table])
    restarted = StreamCommitter.options(num_cpus=0).remote(s, s.stream_predictions_table)
    try:
        added = ray.get(restarted.add.remote(_results(s, range(1000)), True), timeout=60)
    finally:
        ray.kill(restarted)
    assert added == 0
    keys = load_table(s, s.stream_predictions_table).scan().to_arrow()[s.key_column]
    assert sorted(keys.to_pylist()) == expected


def test_expiry_keeps_the_snapshots_of_unfinished_runs(lake: Settings) -> None:
    """Batch predictions of a finished and an unfinished run: after maintenance with no
    retention the unfinished run still finds its committed units (a resume skips them); every
    row is still there; files of expired snapshots are removed, referenced ones never."""
    s = lake
    store = CheckpointStore(s.resolved_database_url)
    features = s.table_id(s.features_table)
    append_features(s, 20, seed=1)
    snapshot = load_table(s, s.features_table).current_snapshot()
    assert snapshot is not None
    common = {"kind": "batch-inference", "dataset": features, "model_version": 1, "mode": "fused"}
    done = store.start_run(snapshot_id=snapshot.snapshot_id, **common)
    store.acquire(done.run_id, "tester", 60)
    store.finish(done.run_id, "tester", "succeeded")
    unfinished = store.start_run(snapshot_id=snapshot.snapshot_id, **common)
    table = disable_auto_retry(load_table(s, s.predictions_table))
    schema = table.schema().as_arrow()
    for run, unit in ((done, 0), (unfinished, 0), (unfinished, 1), (done, 1)):
        row = _prediction(s, f"{run.run_id}-{unit}", run.run_id)
        rows = pa.Table.from_pylist([row], schema=schema)
        files = write_data_files(table.metadata, table.io, rows)
        commit_units(table, run.run_id, {unit: UnitFiles(1, files)})
    before = _rows(s, s.predictions_table)
    aggressive = s.model_copy(update={"snapshot_retention_hours": 0, "orphan_min_age_hours": 0})
    [report] = maintain(aggressive, [s.predictions_table])
    assert report.snapshots_expired >= 1 and report.files_after == 1
    table = load_table(s, s.predictions_table)
    assert committed_units(table, unfinished.run_id) == {0: 1, 1: 1}
    assert _rows(s, s.predictions_table) == before
    on_disk = {str(p) for p in Path(table.location().removeprefix("file://")).rglob("*.parquet")}
    referenced = {p.removeprefix("file://") for p in referenced_files(table)}
    assert on_disk <= referenced  # orphans gone
    assert {e.data_file.file_path.removeprefix("file://") for e in live_entries(table)} <= on_disk


def _prediction(s: Settings, key: str, run_id: str) -> dict:
    """One batch prediction row, in the predictions table's columns."""
    return {
        s.key_column: key,
        "class_index": 1,
        "label": "versicolor",
        "probabilities": [0.1, 0.8, 0.1],
        "model_version": 1,
        "reason": None,
        "run_id": run_id,
        "input_snapshot_id": 1,
    }


def test_the_flow_publishes_its_summary(lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    s = lake
    for seed in range(4):  # four small files: one size tier's worth
        append_features(s, 10, seed=seed)
    with settings_in_process(monkeypatch, settings_env(s)):
        state = table_maintenance(return_state=True)
    assert state.is_completed(), state
    rows = {row["table"]: row for row in state.result()}
    assert rows[s.table_id(s.features_table)]["files_compacted"] == 4
    assert set(rows) == {
        s.table_id(name)
        for name in (
            s.features_table,
            s.predictions_table,
            s.stream_predictions_table,
            s.feature_windows_table,
        )
    }
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    [summary] = [a for a in artifacts if a.key == "table-maintenance"]
    assert summary.type == "table"
    assert "files_before" in str(summary.data) and "seconds" in str(summary.data)
    shown = json.loads(summary.data) if isinstance(summary.data, str) else summary.data
    [features] = [row for row in shown if row["table"] == s.table_id(s.features_table)]
    assert (features["files_before"], features["files_after"]) == (4, 1)
