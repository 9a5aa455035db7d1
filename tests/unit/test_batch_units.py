"""Pure parts of batch inference: reading a unit's row groups, the model stage's per-unit error
isolation and timeout, and the driver's stall watchdog."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, NestedField, StringType

from mlplatform.batch_inference import BatchInferenceStalled, _watched, failure_report
from mlplatform.batch_predictors import Predictor, predict_frame
from mlplatform.batch_units import ERROR, UNIT, UNIT_ROWS, read_unit, read_units
from mlplatform.model_registry import ModelRef

pytestmark = pytest.mark.unit

REF = ModelRef(
    version=7, artifact_path="/nonexistent", sha256="0" * 64, feature_order=("f1", "f2"),
    label_names=("low", "high"),
)  # fmt: skip
COLUMNS = ["event_id", "f1", "f2"]
SCHEMA = Schema(
    NestedField(1, "event_id", StringType(), required=True),
    NestedField(2, "f1", DoubleType(), required=True),
    NestedField(3, "f2", DoubleType(), required=True),
).model_dump_json()


@pytest.fixture
def parquet(tmp_path: Path) -> str:
    """Ten rows in five row groups of two."""
    table = pa.table({"event_id": [f"e{i}" for i in range(10)], "f1": np.arange(10.0),
                      "f2": np.ones(10), "label": np.zeros(10, dtype=np.int32)})  # fmt: skip
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=2)
    return str(path)


def test_read_unit_reads_its_row_groups_only(parquet: str) -> None:
    frame = read_unit(4, parquet, first_row_group=1, row_groups=2, columns=COLUMNS)
    assert list(frame["event_id"]) == ["e2", "e3", "e4", "e5"]
    assert list(frame.columns) == [*COLUMNS, UNIT, UNIT_ROWS, ERROR]
    assert set(frame[UNIT]) == {4} and set(frame[UNIT_ROWS]) == {4} and set(frame[ERROR]) == {""}


def test_read_unit_filter_and_an_empty_unit(parquet: str) -> None:
    frame = read_unit(0, parquet, 0, 5, COLUMNS, "f1 >= 7.0", SCHEMA)
    assert list(frame["event_id"]) == ["e7", "e8", "e9"] and set(frame[UNIT_ROWS]) == {3}
    empty = read_unit(1, parquet, 0, 1, COLUMNS, "f1 > 100", SCHEMA)
    assert len(empty) == 1 and empty["event_id"].isna().all()  # a placeholder row
    assert (int(empty[UNIT_ROWS].iloc[0]), empty[ERROR].iloc[0]) == (0, "")


def test_read_units_turns_an_unreadable_unit_into_an_error_row(parquet: str) -> None:
    batch = pd.DataFrame({"unit": [0, 1], "file_path": [parquet, parquet + ".gone"],
                          "first_row_group": [0, 0], "row_groups": [1, 1]})  # fmt: skip
    out = read_units(batch, COLUMNS, None, None)
    assert list(out[out[UNIT] == 0]["event_id"]) == ["e0", "e1"]
    [error] = out[out[UNIT] == 1][ERROR]
    assert error.startswith("read failed:") and ".gone" in error


class _FailsOnNegative:
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative feature")
        p = np.clip(x[:, :1] / 10.0, 0.0, 1.0)
        return np.hstack([1.0 - p, p])


def _batch(rows: list[tuple[int, str | None, float]]) -> pd.DataFrame:
    units = [u for u, _, _ in rows]
    return pd.DataFrame({
        "event_id": [k for _, k, _ in rows], "f1": [f for _, _, f in rows], "f2": 0.0,
        UNIT: units, UNIT_ROWS: [units.count(u) for u in units], ERROR: "",
    })  # fmt: skip


def test_predict_frame_marks_only_the_failing_unit() -> None:
    batch = _batch([(0, "a", 9.0), (1, "b", -1.0), (1, "c", 2.0), (2, "d", 1.0)])
    out = predict_frame(batch, REF, "event_id", _FailsOnNegative().predict_proba)
    assert list(out[ERROR] != "") == [False, True, True, False]
    assert "negative feature" in out[ERROR].iloc[1]
    assert list(out.loc[[0, 3], "prediction"]) == [1, 0]
    assert set(out["model_version"]) == {7}
    assert out["probabilities"].iloc[0] == pytest.approx([0.1, 0.9])


def test_predict_frame_passes_placeholders_and_read_errors_through() -> None:
    batch = _batch([(0, None, 0.0), (1, "b", 5.0)])
    batch.loc[0, UNIT_ROWS] = 0
    seen: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return _FailsOnNegative().predict_proba(x)

    out = predict_frame(batch, REF, "event_id", predict)
    assert seen == [1]  # the placeholder row is not predicted
    assert list(out["event_id"].isna()) == [True, False]


def test_predictor_times_out_a_stuck_batch() -> None:
    release = threading.Event()

    class Stuck:
        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            release.wait(10)
            return np.zeros((len(x), 2))

    predictor = Predictor(REF, "event_id", timeout_s=0.2, loader=lambda ref: Stuck())
    started = time.monotonic()
    out = predictor(_batch([(0, "a", 1.0), (0, "b", 2.0)]))
    release.set()
    assert time.monotonic() - started < 5
    assert all("took over 0.2 s" in e for e in out[ERROR])


class _Pipeline:
    def __init__(self, frames: list[pd.DataFrame], then_hang: bool) -> None:
        self.frames, self.then_hang = frames, then_hang

    def iter_batches(self, **_: object):
        yield from self.frames
        if self.then_hang:
            threading.Event().wait(30)


def test_watched_yields_everything_then_ends() -> None:
    frames = [pd.DataFrame({"x": [1]}), pd.DataFrame({"x": [2]})]
    assert [f["x"].iloc[0] for f in _watched(_Pipeline(frames, False), 5)] == [1, 2]


def test_watched_fails_a_stalled_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ray.available_resources", lambda: {"CPU": 0.0})
    seen = []
    with pytest.raises(BatchInferenceStalled, match="for 0 s.*'CPU': 0.0"):
        for frame in _watched(_Pipeline([pd.DataFrame({"x": [1]})], True), 0.3):
            seen.append(frame)
    assert len(seen) == 1


def test_failure_report_names_each_unit() -> None:
    from mlplatform.batch_inference import FailedUnit

    report = failure_report("r1", [FailedUnit(3, "s3://b/f.parquet", 500, 3, "ValueError('x')")],
                            10_000)  # fmt: skip
    assert "run r1: 1 unit(s) with 500 of 10000 rows failed" in report
    assert "unit 3 (s3://b/f.parquet, 500 rows, 3 attempts): ValueError('x')" in report
