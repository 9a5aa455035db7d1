"""Pure parts of batch and stream inference: Predictor, _drop_done, predict_messages."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mlplatform.batch_inference import Predictor, _drop_done
from mlplatform.model_registry import ModelRef
from mlplatform.stream_inference import predict_messages

pytestmark = pytest.mark.unit

FEATURES = ("f1", "f2")
REF = ModelRef(
    version=5, artifact_path="/nonexistent/model.skops", sha256="0" * 64,
    feature_order=FEATURES, label_names=("low", "high"),
)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    # Class 1 ("high") when f1 is large; f2 is noise.
    x = np.array([[0.0, 5.0], [1.0, 0.0], [2.0, 3.0], [8.0, 5.0], [9.0, 0.0], [10.0, 3.0]])
    return LogisticRegression().fit(x, [0, 0, 0, 1, 1, 1])


class _Recorder:
    """predict_proba that records its input and favours the class in column 0."""

    def __init__(self) -> None:
        self.seen: np.ndarray | None = None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        self.seen = x
        p = np.clip(x[:, 0:1] / 10.0, 0.0, 1.0)
        return np.hstack([1.0 - p, p])


def test_predictor_uses_injected_loader() -> None:
    loaded: list[ModelRef] = []
    recorder = _Recorder()

    def loader(ref: ModelRef) -> _Recorder:
        loaded.append(ref)
        return recorder

    predictor = Predictor(REF, "event_id", loader=loader)
    assert loaded == [REF]
    assert predictor.model is recorder


def test_predictor_output(model: LogisticRegression) -> None:
    predictor = Predictor(REF, "event_id", loader=lambda ref: model)
    batch = pd.DataFrame({"event_id": ["a", "b", "c"], "f1": [0.5, 9.5, 1.0], "f2": [1, 2, 3]})
    out = predictor(batch)
    assert list(out.columns) == ["event_id", "prediction", "probabilities", "model_version"]
    assert list(out["event_id"]) == ["a", "b", "c"]
    assert list(out["prediction"]) == [0, 1, 0]
    assert out["prediction"].dtype == np.int32
    assert out["model_version"].dtype == np.int32
    assert set(out["model_version"]) == {5}
    for probabilities in out["probabilities"]:
        assert len(probabilities) == 2
        assert sum(probabilities) == pytest.approx(1.0)


def test_predictor_reorders_columns_by_feature_order() -> None:
    recorder = _Recorder()
    predictor = Predictor(REF, "event_id", loader=lambda ref: recorder)
    batch = pd.DataFrame(
        {"f2": [7.0, 8.0], "event_id": ["x", "y"], "extra": [0.0, 0.0], "f1": [2.0, 9.0]}
    )
    out = predictor(batch)
    assert recorder.seen is not None and recorder.seen.dtype == np.float64
    np.testing.assert_array_equal(recorder.seen, [[2.0, 7.0], [9.0, 8.0]])
    assert list(out["prediction"]) == [0, 1]


def test_drop_done() -> None:
    batch = pd.DataFrame({"event_id": ["a", "b", "c", "d"], "f1": [1, 2, 3, 4]})
    kept = _drop_done(batch, "event_id", frozenset({"b", "d", "zz"}))
    assert list(kept["event_id"]) == ["a", "c"]
    assert list(kept["f1"]) == [1, 3]
    assert _drop_done(batch, "event_id", frozenset()) is batch
    assert _drop_done(batch, "event_id", frozenset("abcd")).empty


def test_predict_messages(model: LogisticRegression) -> None:
    payloads = [
        json.dumps({"event_id": "e1", "f1": 9.0, "f2": 1.0, "label": 1}).encode(),
        json.dumps({"f2": 4.0, "event_id": "e2", "f1": 0.5}).encode(),
        json.dumps({"event_id": "e3", "f1": "8.5", "f2": 0}).encode(),
    ]
    results = predict_messages(model, REF, "event_id", payloads)
    assert [r["event_id"] for r in results] == ["e1", "e2", "e3"]
    assert [r["prediction"] for r in results] == [1, 0, 1]
    assert [r["label_name"] for r in results] == ["high", "low", "high"]
    for r in results:
        assert r["model_version"] == 5
        assert sum(r["probabilities"]) == pytest.approx(1.0)
        assert all(isinstance(v, float) for v in r["probabilities"])
        assert isinstance(r["prediction"], int)
    json.dumps(results)  # publishable as is


def test_predict_messages_uses_feature_order() -> None:
    recorder = _Recorder()
    payloads = [json.dumps({"event_id": 1, "f2": 3.0, "f1": 6.0}).encode()]
    [result] = predict_messages(recorder, REF, "event_id", payloads)
    np.testing.assert_array_equal(recorder.seen, [[6.0, 3.0]])
    assert result["probabilities"] == pytest.approx([0.4, 0.6])
    assert result["prediction"] == 1


def test_predict_messages_rejects_missing_feature(model: LogisticRegression) -> None:
    payloads = [json.dumps({"event_id": "e1", "f1": 1.0}).encode()]
    with pytest.raises(KeyError, match="f2"):
        predict_messages(model, REF, "event_id", payloads)


def test_predict_messages_rejects_bad_json(model: LogisticRegression) -> None:
    with pytest.raises(json.JSONDecodeError):
        predict_messages(model, REF, "event_id", [b"not json"])
