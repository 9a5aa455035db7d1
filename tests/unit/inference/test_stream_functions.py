"""Pure parts of stream inference: message parsing and prediction, sequence ids, sticky
ranges, high-water marks."""

from __future__ import annotations

import base64
import json

import numpy as np
import pulsar
import pytest
from sklearn.linear_model import LogisticRegression

from mlplatform.inference.features import InvalidFeatures, parse_message
from mlplatform.inference.stream.committer import high_water_marks, merge_marks
from mlplatform.inference.stream.consumer import predict_rows
from mlplatform.inference.stream.partitions import (
    SOURCE_ID_PROPERTY,
    SOURCE_TOPIC_PROPERTY,
    SourceMarks,
    batch_bounds,
    owned_partitions,
    partition_of,
    sequence_id,
    source_position,
)
from mlplatform.preprocess import flink_job
from mlplatform.registry.model_ref import ModelRef

pytestmark = pytest.mark.unit

FEATURES = ("f1", "f2")
REF = ModelRef(
    version=5,
    artifact_path="/nonexistent/model.skops",
    sha256="0" * 64,
    feature_order=FEATURES,
    label_names=("low", "high"),
)


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    # Class 1 ("high") when f1 is large; f2 is noise.
    x = np.array([[0.0, 5.0], [1.0, 0.0], [2.0, 3.0], [8.0, 5.0], [9.0, 0.0], [10.0, 3.0]])
    return LogisticRegression().fit(x, [0, 0, 0, 1, 1, 1])


class _Recorder:
    """predict_proba that records its input and favours the class in column 0."""

    classes_ = np.array([0, 1])

    def __init__(self) -> None:
        self.seen: np.ndarray | None = None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        self.seen = x
        p = np.clip(x[:, 0:1] / 10.0, 0.0, 1.0)
        return np.hstack([1.0 - p, p])


def predict_payloads(model: object, payloads: list[bytes]) -> list[dict]:
    parsed = [parse_message(p, "event_id", FEATURES) for p in payloads]
    return predict_rows(model, REF, "event_id", [k for k, _ in parsed], [f for _, f in parsed])


def test_predict_rows(model: LogisticRegression) -> None:
    payloads = [
        json.dumps({"event_id": "e1", "f1": 9.0, "f2": 1.0, "label": 1}).encode(),
        json.dumps({"f2": 4.0, "event_id": "e2", "f1": 0.5}).encode(),
        json.dumps({"event_id": "e3", "f1": 8.5, "f2": 0}).encode(),
    ]
    results = predict_payloads(model, payloads)
    assert [r["event_id"] for r in results] == ["e1", "e2", "e3"]
    assert [r["class_index"] for r in results] == [1, 0, 1]
    assert [r["label"] for r in results] == ["high", "low", "high"]
    for r in results:
        assert r["model_version"] == 5
        assert sum(r["probabilities"]) == pytest.approx(1.0)
        assert all(isinstance(v, float) for v in r["probabilities"])
        assert isinstance(r["class_index"], int)
    json.dumps(results)  # publishable as is


def test_predict_rows_uses_feature_order() -> None:
    recorder = _Recorder()
    payloads = [json.dumps({"event_id": 1, "f2": 3.0, "f1": 6.0}).encode()]
    [result] = predict_payloads(recorder, payloads)
    np.testing.assert_array_equal(recorder.seen, [[6.0, 3.0]])
    assert result["probabilities"] == pytest.approx([0.4, 0.6])
    assert result["class_index"] == 1
    assert result["event_id"] == "1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"[1, 2]", "not_object: a JSON list"),
        (b'{"f1": 1, "f2": 2}', "missing_key: event_id"),
        (b'{"event_id": "", "f1": 1, "f2": 2}', "missing_key: event_id"),
        (b'{"event_id": "e", "f1": 1}', "missing_feature: f2"),
        (b'{"event_id": "e", "f1": "1.5", "f2": 2}', "not_number: f1='1.5'"),
        (b'{"event_id": "e", "f1": true, "f2": 2}', "not_number: f1=True"),
        (b'{"event_id": "e", "f1": 1, "f2": NaN}', "not_finite: f2=nan"),
        (b'{"event_id": "e", "f1": -Infinity, "f2": 1}', "not_finite: f1=-inf"),
        (b'{"event_id": "e", "f1": 1' + b"0" * 400 + b', "f2": 1}', "not_finite: f1=1000"),
        (b'{"event_id": "e"}', "missing_feature: f1, f2"),
    ],
)
def test_parse_message_names_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidFeatures) as error:
        parse_message(payload, "event_id", FEATURES)
    assert error.value.reason.startswith(reason)


def test_a_refused_value_says_the_same_to_both_doors() -> None:
    """The dead-letter reason and the HTTP message come from one refusal."""
    with pytest.raises(InvalidFeatures) as error:
        parse_message(b'{"event_id": "e", "f1": 1, "f2": "x"}', "event_id", FEATURES)
    assert error.value.reason == "not_number: f2='x'"
    assert str(error.value) == "feature 1 (f2): 'x' is not a number"
    assert (error.value.code, error.value.feature, error.value.row) == ("not_number", "f2", None)


def test_a_model_without_some_class_predicts_in_label_order() -> None:
    """classes_ [0, 2] of three labels: two probability columns, placed at labels 0 and 2."""
    x = np.array([[0.0, 0.0], [1.0, 0.0], [9.0, 0.0], [10.0, 0.0]])
    model = LogisticRegression().fit(x, [0, 0, 2, 2])
    ref = ModelRef(5, "/nonexistent", "0" * 64, FEATURES, ("low", "mid", "high"))
    [row] = predict_rows(model, ref, "event_id", ["e"], [[9.5, 0.0]])
    assert list(row) == ["event_id", "class_index", "label", "probabilities", "model_version"]
    assert (row["class_index"], row["label"]) == (2, "high")
    assert len(row["probabilities"]) == 3 and row["probabilities"][1] == 0.0
    assert row["probabilities"][2] > 0.5


class _Id:
    def __init__(self, ledger: int, entry: int, index: int = -1) -> None:
        self.values = (ledger, entry, index)

    def ledger_id(self) -> int:
        return self.values[0]

    def entry_id(self) -> int:
        return self.values[1]

    def batch_index(self) -> int:
        return self.values[2]


def test_sequence_ids_follow_message_positions() -> None:
    positions = [(3, 0, 0), (3, 0, 1), (3, 1), (3, 49_999, 999), (4, 0), (900, 2)]
    ids = [sequence_id(_Id(*p)) for p in positions]  # type: ignore[arg-type]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))  # strictly increasing
    assert sequence_id(_Id(3, 0)) == ids[0]  # a message outside a batch is its own index 0
    with pytest.raises(ValueError, match="outside"):
        sequence_id(_Id(1, 1 << 24))  # type: ignore[arg-type]


def test_failover_actors_own_whole_partitions() -> None:
    assert [owned_partitions(i, 2, 4) for i in range(2)] == [[0, 2], [1, 3]]
    assert [owned_partitions(i, 3, 3) for i in range(3)] == [[0], [1], [2]]
    assert owned_partitions(0, 1, 0) == [0]
    with pytest.raises(ValueError, match="3 stream actors but the features topic has 2"):
        owned_partitions(0, 3, 2)


def test_result_batches_stay_within_the_byte_limit_in_order() -> None:
    assert batch_bounds([40, 40, 40, 40, 40], 100) == [(0, 2), (2, 4), (4, 5)]
    assert batch_bounds([10] * 5, 100) == [(0, 5)]
    assert batch_bounds([30, 150, 30, 30], 100) == [(0, 1), (1, 2), (2, 4)]  # oversize: alone
    assert batch_bounds([100, 1], 100) == [(0, 1), (1, 2)]
    assert batch_bounds([], 100) == []


def test_partition_of_a_topic_name() -> None:
    assert partition_of("persistent://public/default/features-partition-3") == 3
    assert partition_of("persistent://public/default/features") == 0
    assert partition_of("persistent://public/default/my-partition-x") == 0


def test_high_water_marks_take_each_producers_maximum() -> None:
    class Summary:
        def __init__(self, props: dict[str, str]) -> None:
            self.additional_properties = props

    class Snapshot:
        def __init__(self, props: dict[str, str]) -> None:
            self.summary = Summary(props)

    class Table:
        def snapshots(self) -> list[Snapshot]:
            return [
                Snapshot({"mlp.hwm.s-0-p0": "10", "mlp.hwm.s-1-p0": "7", "other": "x"}),
                Snapshot({"mlp.hwm.s-0-p0": "25"}),
                Snapshot({"mlp.hwm.s-0-p1": "3"}),
            ]

    assert high_water_marks(Table()) == {"s-0-p0": 25, "s-1-p0": 7, "s-0-p1": 3}


def test_merged_marks_keep_each_producers_maximum() -> None:
    into = {"a": 5, "b": 9}
    assert merge_marks(into, {"a": 7, "b": 2, "c": 0}) is into
    assert into == {"a": 7, "b": 9, "c": 0}


class _Message:
    def __init__(self, properties: dict[str, str]) -> None:
        self._properties = properties

    def properties(self) -> dict[str, str]:
        return self._properties


def test_a_features_message_names_its_raw_event() -> None:
    """The Flink job sets the properties the consumers read (two modules, one contract)."""
    assert (flink_job.SOURCE_TOPIC_PROPERTY, flink_job.SOURCE_ID_PROPERTY) == (
        SOURCE_TOPIC_PROPERTY,
        SOURCE_ID_PROPERTY,
    )
    raw_id = pulsar.MessageId(0, 7, 3, -1)  # partition, ledger, entry, batch index
    topic = "pulsar:persistent://public/default/raw-events-partition-2"
    encoded = base64.b64encode(raw_id.serialize()).decode()
    message = _Message({SOURCE_TOPIC_PROPERTY: topic, SOURCE_ID_PROPERTY: encoded})
    assert source_position(message) == ("r2", sequence_id(raw_id))  # type: ignore[arg-type]
    assert source_position(_Message({})) is None  # type: ignore[arg-type]
    for bad in ("not base64!", base64.b64encode(b"garbage").decode()):
        bad_message = _Message({SOURCE_TOPIC_PROPERTY: topic, SOURCE_ID_PROPERTY: bad})
        assert source_position(bad_message) is None  # type: ignore[arg-type]


def test_source_marks_drop_repeats_of_raw_events_already_answered() -> None:
    marks = SourceMarks({"sub-p0.r0": 10})  # committed: raw position 10 had its result
    assert marks.repeated("sub-p0", ("r0", 10)) and marks.repeated("sub-p0", ("r0", 4))
    assert not marks.repeated("sub-p0", ("r0", 11))  # new, and the newest from now on
    assert marks.repeated("sub-p0", ("r0", 11))  # its repeat
    # Each features partition (producer) and raw partition has a mark of its own.
    assert not marks.repeated("sub-p1", ("r0", 3))
    assert not marks.repeated("sub-p0", ("r1", 3))
