"""Pure parts of batch inference: reading a unit's row groups, the model stage's per-unit error
isolation and timeout, the driver's stall watchdog, and the request the flow builds."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, NestedField, StringType

from mlplatform.inference.batch.model_stage import ModelStage, UnitWork, predict_table, run_units
from mlplatform.inference.batch.pipeline import BatchInferenceStalled, watch_output
from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.results import FailedUnit, failure_report, step_costs
from mlplatform.inference.batch.runner import commit_interval_rows
from mlplatform.inference.batch.unit_files import (
    ARRIVED,
    REASONS,
    ROWS,
    failed_parts,
    part_files,
    predictions_rows,
    unit_parts,
    write_parts,
)
from mlplatform.inference.batch.units import ERROR, UNIT, UNIT_ROWS, read_unit, read_units
from mlplatform.registry.model_ref import ModelRef
from tests.helpers import predictions_target, written_rows

pytestmark = pytest.mark.unit

REF = ModelRef(
    version=7,
    artifact_path="/nonexistent",
    sha256="0" * 64,
    feature_order=("f1", "f2"),
    label_names=("low", "high"),
)
COLUMNS = ["event_id", "f1", "f2"]
SCHEMA = Schema(
    NestedField(1, "event_id", StringType(), required=True),
    NestedField(2, "f1", DoubleType(), required=True),
    NestedField(3, "f2", DoubleType(), required=True),
).model_dump_json()


@pytest.fixture
def parquet(tmp_path: Path) -> str:
    """Ten rows in five row groups of two."""
    table = pa.table(
        {
            "event_id": [f"e{i}" for i in range(10)],
            "f1": np.arange(10.0),
            "f2": np.ones(10),
            "label": np.zeros(10, dtype=np.int32),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=2)
    return str(path)


def test_read_unit_reads_its_row_groups_only(parquet: str) -> None:
    table = read_unit(4, parquet, first_row_group=1, row_groups=2, columns=COLUMNS)
    assert table["event_id"].to_pylist() == ["e2", "e3", "e4", "e5"]
    assert table.column_names == [*COLUMNS, UNIT, UNIT_ROWS, ERROR]
    assert table.schema.field("f1").type == pa.float64()
    assert set(table[UNIT].to_pylist()) == {4} and set(table[UNIT_ROWS].to_pylist()) == {4}
    assert set(table[ERROR].to_pylist()) == {""}


def test_read_unit_filter_and_an_empty_unit(parquet: str) -> None:
    table = read_unit(0, parquet, 0, 5, COLUMNS, "f1 >= 7.0", SCHEMA)
    assert table["event_id"].to_pylist() == ["e7", "e8", "e9"]
    assert set(table[UNIT_ROWS].to_pylist()) == {3}
    empty = read_unit(1, parquet, 0, 1, COLUMNS, "f1 > 100", SCHEMA)
    assert empty["event_id"].to_pylist() == [None]  # a placeholder row
    assert (empty[UNIT_ROWS][0].as_py(), empty[ERROR][0].as_py()) == (0, "")
    assert empty.schema == table.schema  # blocks of both kinds concatenate


def test_read_units_turns_an_unreadable_unit_into_an_error_row(parquet: str) -> None:
    batch = pa.table(
        {
            "unit": [0, 1],
            "file_path": [parquet, parquet + ".gone"],
            "first_row_group": [0, 0],
            "row_groups": [1, 1],
        }
    )
    out = read_units(batch, COLUMNS, None, None).to_pandas()
    assert list(out[out[UNIT] == 0]["event_id"]) == ["e0", "e1"]
    [error] = out[out[UNIT] == 1][ERROR]
    assert error.startswith("read failed:") and ".gone" in error


class _FailsOnNegative:
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative feature")
        p = np.clip(x[:, :1] / 10.0, 0.0, 1.0)
        return np.hstack([1.0 - p, p])


def _batch(
    rows: list[tuple[int, str | None, float]],
    unit_rows: list[int] | None = None,
    errors: list[str] | None = None,
):
    units = [u for u, _, _ in rows]
    return pa.table(
        {
            "event_id": pa.array([k for _, k, _ in rows], pa.string()),
            "f1": [f for _, _, f in rows],
            "f2": [0.0] * len(rows),
            UNIT: units,
            UNIT_ROWS: unit_rows or [units.count(u) for u in units],
            ERROR: errors or [""] * len(rows),
        }
    )


def test_predict_table_marks_only_the_failing_unit() -> None:
    batch = _batch([(0, "a", 9.0), (1, "b", -1.0), (1, "c", 2.0), (2, "d", 1.0)])
    out = predict_table(batch, REF, "event_id", _FailsOnNegative().predict_proba).to_pandas()
    assert list(out[ERROR] != "") == [False, True, True, False]
    assert "negative feature" in out[ERROR].iloc[1]
    assert list(out.loc[[0, 3], "class_index"]) == [1, 0]
    assert list(out.loc[[0, 3], "label"]) == ["high", "low"]
    assert set(out["model_version"]) == {7}
    assert out["probabilities"].iloc[0] == pytest.approx([0.1, 0.9])
    assert out["probabilities"].iloc[3] == pytest.approx([0.9, 0.1])


def test_predict_table_passes_placeholders_and_read_errors_through() -> None:
    batch = _batch([(0, None, 0.0), (1, "b", 5.0), (2, "c", 1.0)], unit_rows=[0, 1, 1])
    batch = batch.set_column(5, ERROR, pa.array(["", "", "read failed: x"]))
    seen: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return _FailsOnNegative().predict_proba(x)

    out = predict_table(batch, REF, "event_id", predict)
    assert seen == [1]  # neither the placeholder row nor the failed read is predicted
    assert out["event_id"].to_pylist() == [None, "b", "c"]
    assert out[ERROR].to_pylist() == ["", "", "read failed: x"]


def test_a_pool_call_that_times_out_fails_its_unit_and_writes_nothing(tmp_path: Path) -> None:
    def timed_out(features: np.ndarray) -> np.ndarray:
        raise TimeoutError(f"batch of {len(features)} rows took over 0.2 s")

    stage = ModelStage(REF, "event_id", predictions_target(tmp_path), timed_out)
    [part] = stage(_batch([(0, "a", 1.0), (0, "b", 2.0)])).to_pylist()
    assert "took over 0.2 s" in part[ERROR]
    assert (part[ROWS], part_files(part)) == (0, [])  # a failed part writes nothing


def test_the_write_stage_writes_each_unit_part_and_reports_only_metadata(tmp_path: Path) -> None:
    """Unit 0 predicted (one row refused), unit 1 a placeholder (no matching rows), unit 2 a
    failed read: one metadata row each; only unit 0 has a data file, with its rows."""
    target = predictions_target(tmp_path, run_id="run-7", snapshot_id=5)
    batch = _batch([(0, "a", 1.0), (0, "b", 2.0), (1, None, 0.0)], unit_rows=[2, 2, 0])
    batch = pa.concat_tables(
        [batch, _batch([(2, None, 0.0)], unit_rows=[0], errors=["read failed: x"])]
    )
    predicted = predict_table(batch, REF, "event_id", _FailsOnNegative().predict_proba)
    predicted = predicted.set_column(
        predicted.schema.get_field_index("reason"),
        "reason",
        pa.array([None, "out_of_range:f1", None, None], pa.string()),
    )
    parts = write_parts(predicted, target).to_pylist()
    assert [(p[UNIT], p[UNIT_ROWS], p[ARRIVED], p[ROWS]) for p in parts] == [
        (0, 2, 2, 2),
        (1, 0, 1, 0),
        (2, 0, 1, 0),
    ]
    assert [p[ERROR] for p in parts] == ["", "", "read failed: x"]
    assert [json.loads(p[REASONS]) for p in parts] == [{"out_of_range:f1": 1}, {}, {}]
    assert [len(part_files(p)) for p in parts] == [1, 0, 0]
    rows = written_rows(write_parts(predicted, target).slice(0, 1))
    assert rows["event_id"].to_pylist() == ["a", "b"]
    assert rows["reason"].to_pylist() == [None, "out_of_range:f1"]
    assert set(rows["run_id"].to_pylist()) == {"run-7"}
    assert [f.record_count for f in part_files(parts[0])] == [2]


def _unit(unit: int, path: str, first: int, groups: int) -> dict:
    return {"unit": unit, "file_path": path, "first_row_group": first, "row_groups": groups}


def test_run_units_reads_predicts_in_batches_and_writes_each_unit_where_it_runs(
    parquet: str, tmp_path: Path
) -> None:
    """A unit's whole work in one process: 6 rows predicted 4 at a time, one data file; an
    unreadable unit and a unit whose prediction fails are error rows that write nothing."""
    target = predictions_target(tmp_path / "lake", run_id="run-3")
    kwargs = {"columns": COLUMNS, "row_filter": None, "schema_json": None}
    work = UnitWork(REF, "event_id", target, kwargs, batch_size=4)
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if (x[:, 0] == 8.0).any():  # row e8: unit 2's
            raise ValueError("poisoned row")
        return _FailsOnNegative().predict_proba(x)

    specs = [_unit(0, parquet, 0, 3), _unit(1, parquet + ".gone", 0, 1), _unit(2, parquet, 3, 2)]
    parts = run_units(specs, work, predict).to_pylist()
    assert [(p[UNIT], p[UNIT_ROWS], p[ARRIVED], p[ROWS]) for p in parts] == [
        (0, 6, 6, 6),
        (1, 0, 1, 0),
        (2, 4, 4, 0),
    ]
    assert parts[0][ERROR] == "" and parts[1][ERROR].startswith("read failed:")
    assert "poisoned row" in parts[2][ERROR]
    assert calls[:2] == [4, 2]  # unit 0 in batches of batch_size rows
    assert [len(part_files(p)) for p in parts] == [1, 0, 0]
    rows = written_rows(run_units(specs[:1], work, predict))
    assert rows["event_id"].to_pylist() == [f"e{i}" for i in range(6)]
    assert set(rows["run_id"].to_pylist()) == {"run-3"}


def test_a_failed_part_is_an_error_row_with_nothing_written(tmp_path: Path) -> None:
    parts = failed_parts(4, "predict failed: unit not done in 120 s").to_pylist()
    assert [(p[UNIT], p[ROWS], p[ERROR]) for p in parts] == [
        (4, 0, "predict failed: unit not done in 120 s")
    ]
    assert [part_files(p) for p in parts] == [[]]
    predicted = predict_table(
        _batch([(0, "a", 1.0)]), REF, "event_id", _FailsOnNegative().predict_proba
    )
    written = write_parts(predicted, predictions_target(tmp_path))
    assert failed_parts(4, "x").schema == written.schema  # they concatenate in one output


class _Pipeline:
    def __init__(self, frames: list[pd.DataFrame], then_hang: bool) -> None:
        self.frames, self.then_hang = frames, then_hang

    def iter_batches(self, **_: object):
        yield from self.frames
        if self.then_hang:
            threading.Event().wait(30)


def test_watch_output_yields_everything_then_ends() -> None:
    frames = [pd.DataFrame({"x": [1]}), pd.DataFrame({"x": [2]})]
    assert [f["x"].iloc[0] for f in watch_output(_Pipeline(frames, False), 5)] == [1, 2]


def test_watch_output_fails_a_stalled_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ray.available_resources", lambda: {"CPU": 0.0})
    seen = []
    with pytest.raises(BatchInferenceStalled, match="for 0 s.*'CPU': 0.0"):
        for frame in watch_output(_Pipeline([pd.DataFrame({"x": [1]})], True), 0.3):
            seen.append(frame)
    assert len(seen) == 1


def test_failure_report_names_each_unit() -> None:
    report = failure_report(
        "r1", [FailedUnit(3, "s3://b/f.parquet", 500, 3, "ValueError('x')")], 10_000
    )
    assert "run r1: 1 unit(s) with 500 of 10000 rows failed" in report
    assert "unit 3 (s3://b/f.parquet, 500 rows, 3 attempts): ValueError('x')" in report


def test_unit_parts_groups_rows_by_unit_without_reordering_a_unit() -> None:
    table = pa.table({UNIT: [3, 3, 1, 1, 1], "x": [0, 1, 2, 3, 4]})
    assert [(u, p["x"].to_pylist()) for u, p in unit_parts(table)] == [(3, [0, 1]), (1, [2, 3, 4])]
    scattered = pa.table({UNIT: [2, 5, 2], "x": [0, 1, 2]})
    assert [(u, p["x"].to_pylist()) for u, p in unit_parts(scattered)] == [(2, [0, 2]), (5, [1])]
    assert list(unit_parts(scattered.slice(0, 0))) == []


def test_predictions_rows_drop_placeholders_and_take_the_table_schema() -> None:
    from mlplatform.connectors.iceberg_tables import predictions_schema
    from mlplatform.settings import Settings

    schema = predictions_schema(Settings()).as_arrow()
    out = predict_table(
        _batch([(0, "a", 9.0), (1, None, 0.0)], unit_rows=[1, 0]),
        REF,
        "event_id",
        _FailsOnNegative().predict_proba,
    )
    rows = predictions_rows(out, "event_id", schema, "run-1", 99)
    assert rows.schema == schema
    assert rows["event_id"].to_pylist() == ["a"]
    assert (rows["class_index"].to_pylist(), rows["label"].to_pylist()) == ([1], ["high"])
    assert rows["probabilities"].to_pylist() == [pytest.approx([0.1, 0.9])]
    assert (rows["run_id"].to_pylist(), rows["input_snapshot_id"].to_pylist()) == (["run-1"], [99])


def test_commit_interval_is_the_smaller_of_rows_and_fraction_of_the_run() -> None:
    from mlplatform.settings import Settings

    s = Settings(commit_every_rows=100_000, commit_every_fraction=0.02)
    assert commit_interval_rows(s, 1_000_000) == 20_000
    assert commit_interval_rows(s, 100_000_000) == 100_000
    assert commit_interval_rows(s, 10) == 1


def test_niceness_is_set_for_every_thread_and_restored_after_a_block() -> None:
    """In a child process (a test must not change its own priority): raising niceness needs no
    privilege; the block's niceness is undone afterwards where the process may lower it."""
    code = """
import os, threading
from mlplatform.connectors.niceness import at_niceness, set_niceness
start = os.getpriority(os.PRIO_PROCESS, 0)
waiting = threading.Event()
other = threading.Thread(target=waiting.wait, daemon=True)
other.start()
with at_niceness(None):
    assert os.getpriority(os.PRIO_PROCESS, 0) == start
before = set_niceness(start + 1)
assert before[other.native_id] == start, before
assert os.getpriority(os.PRIO_PROCESS, other.native_id) == start + 1
with at_niceness(start + 2):
    assert os.getpriority(os.PRIO_PROCESS, 0) == start + 2
restored = os.getpriority(os.PRIO_PROCESS, 0)
assert restored == (start + 1 if os.geteuid() == 0 else start + 2), restored
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_the_flow_parameters_are_the_fields_of_the_request() -> None:
    """The flow builds one BatchRequest from its parameters (deployments pass them by name)."""
    from flows.batch_inference import batch_inference

    flow_parameters = inspect.signature(batch_inference.fn).parameters
    # Plus the model by name, which picks the settings (the registry's model) the request runs on.
    request_fields = [f.name for f in fields(BatchRequest) if f.name != "run_id"]
    assert list(flow_parameters) == [*request_fields, "model"]
    defaults = BatchRequest()  # the flow's defaults are the request's
    assert all(p.default == getattr(defaults, n, None) for n, p in flow_parameters.items())
    request = BatchRequest(mode="fused")
    assert request == BatchRequest(mode="fused") and request.model_version is None
    with pytest.raises(FrozenInstanceError):
        request.mode = "separated"  # type: ignore[misc]


def test_step_costs_are_the_differences_between_the_steps_reached() -> None:
    steps = {"planned": 0.5, "ray_connected": 2.0, "first_prediction": 6.25}
    assert step_costs(steps) == {"planned": 0.5, "ray_connected": 1.5, "first_prediction": 4.25}
    assert step_costs({}) == {}
