"""Flink preprocessing in depth, on the real services (Flink local mini-cluster, Pulsar, Iceberg):
the bad-row matrix (one row per quarantine reason, into the Iceberg quarantine table and the
Pulsar quarantine topic), replays that add nothing to either feature sink, and the run's
Prefect artifact.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from pathlib import Path

import pulsar
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.preprocess import preprocess as preprocess_flow
from mlplatform.dataset import header
from mlplatform.iceberg_tables import load_table
from mlplatform.preprocess import PreprocessResult, preprocess
from mlplatform.pulsar_io import make_client, receive_batch
from mlplatform.settings import Settings, get_settings
from tests.conftest import module_settings, settings_env

pytestmark = pytest.mark.integration

MAX_LINE_BYTES = 256
GOOD = [b"g1,5.0,3.5,1.4,0.2,0", b"g2,6.1,2.8,4.7,1.2,1", b"g3,7.7,3.0,6.1,2.3,2"]
# Each bad row with the one reason it must be quarantined for.
BAD = {
    b" \t ": "empty_payload",
    b"o1," + b"9" * MAX_LINE_BYTES: "oversized_payload",
    b"u1,5.1,\xff\xfe,1.4,0.2,0": "not_utf8",
    b"m1,5.1,3.5,1.4,0": "missing_fields",
    b"x1,5.1,3.5,1.4,0.2,0,9": "extra_fields",
    b",5.1,3.5,1.4,0.2,0": "missing_key:event_id",
    b"v1,5.1,,1.4,0.2,0": "missing_value:sepal_width",
    b"l3,5.1,3.5,1.4,0.2,": "missing_value:label",
    b"n1,5.1,abc,1.4,0.2,0": "not_a_number:sepal_width",
    # A real U+FFFD in the input is valid UTF-8: it is just not a number.
    "w1,5.1,3.5,\ufffd,0.2,0".encode(): "not_a_number:petal_length",
    b"f1,NaN,3.5,1.4,0.2,0": "not_finite:sepal_length",
    b"f2,5.1,-Infinity,1.4,0.2,0": "not_finite:sepal_width",
    b"f3,5.1,3.5,1.4,1e999,0": "not_finite:petal_width",
    b"r1,5.1,3.5,99.0,0.2,0": "out_of_range:petal_length",
    b"l1,5.1,3.5,1.4,0.2,setosa": "not_an_integer:label",
    b"l2,5.1,3.5,1.4,0.2,7": "out_of_range:label",
    # The same event id as the first good row, later in the file: the first one is kept.
    b"g1,5.1,3.5,1.4,0.2,1": "duplicate_key",
}


def _write(s: Settings, name: str, lines: list[bytes]) -> Path:
    s.resolved_landing_dir.mkdir(parents=True, exist_ok=True)
    path = s.resolved_landing_dir / name
    path.write_bytes(b"\n".join([header(s).encode(), *lines]) + b"\n")
    return path


def _consume_from_earliest(s: Settings, topic: str) -> list[pulsar.Message]:
    """Every message on the topic, through a new subscription that starts at the earliest."""
    client = make_client(s)
    try:
        consumer = client.subscribe(
            topic,
            f"check-{uuid.uuid4().hex[:8]}",
            initial_position=pulsar.InitialPosition.Earliest,
        )
        messages = receive_batch(consumer, limit=10_000, window_ms=5000)
        consumer.unsubscribe()
        return messages
    finally:
        client.close()


def _shown(raw: bytes) -> str:
    """The raw text the quarantine table keeps: decoded as Flink does, an oversized one cut."""
    return raw.decode("utf-8", errors="replace")[:MAX_LINE_BYTES]


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    return module_settings(isolated, "quarantine", max_line_bytes=MAX_LINE_BYTES)


@pytest.fixture(scope="module")
def first_run(lake: Settings) -> PreprocessResult:
    # Good and bad rows interleaved, the duplicate after its first occurrence.
    lines = [GOOD[0], *list(BAD)[:8], GOOD[1], *list(BAD)[8:], GOOD[2]]
    _write(lake, "matrix.csv", lines)
    return preprocess(lake, run_id="it-matrix")


def test_every_row_is_accounted_for_by_reason(first_run: PreprocessResult) -> None:
    assert first_run.rows_read == len(GOOD) + len(BAD)
    assert (first_run.features_rows, first_run.already_ingested) == (len(GOOD), 0)
    assert first_run.quarantined_by_reason == dict(sorted(Counter(BAD.values()).items()))
    assert first_run.quarantined_rows == len(BAD)


def test_each_bad_row_is_in_the_quarantine_table_with_its_reason(
    lake: Settings, first_run: PreprocessResult
) -> None:
    rows = load_table(lake, lake.quarantine_table).scan().to_pandas()
    assert dict(zip(rows["raw"], rows["reason"], strict=True)) == {
        _shown(raw): reason for raw, reason in BAD.items()
    }
    assert rows["source"].str.endswith("/matrix.csv").all()
    assert rows["quarantined_at"].notna().all()


def test_each_bad_row_is_on_the_quarantine_topic_with_its_exact_bytes(
    lake: Settings, first_run: PreprocessResult
) -> None:
    messages = [json.loads(m.data()) for m in _consume_from_earliest(lake, lake.quarantine_topic)]
    assert len(messages) == len(BAD)
    by_reason = {m["reason"]: m for m in messages}
    for raw, reason in BAD.items():
        message = by_reason[reason]
        assert message["raw"] == _shown(raw), reason
        assert message["source"].endswith("/matrix.csv")
        if reason == "oversized_payload":
            assert message["raw_base64"] is None  # only its first max_line_bytes characters
        else:  # the bytes as they came, even those that are not UTF-8
            assert base64.b64decode(message["raw_base64"]) == raw, reason


def test_good_rows_land_in_both_feature_sinks(lake: Settings, first_run: PreprocessResult) -> None:
    features = load_table(lake, lake.features_table).scan().to_pandas()
    assert sorted(features[lake.key_column]) == ["g1", "g2", "g3"]
    assert features.set_index(lake.key_column).loc["g1", "sepal_length"] == 5.0  # the first g1
    messages = [json.loads(m.data()) for m in _consume_from_earliest(lake, lake.features_topic)]
    assert sorted(m[lake.key_column] for m in messages) == ["g1", "g2", "g3"]
    assert {m[lake.key_column]: m["label"] for m in messages} == {"g1": 0, "g2": 1, "g3": 2}


@pytest.fixture(scope="module")
def replayed(lake: Settings, first_run: PreprocessResult) -> PreprocessResult:
    processed = lake.resolved_landing_dir / "_processed" / "it-matrix" / "matrix.csv"
    (lake.resolved_landing_dir / "matrix.csv").write_bytes(processed.read_bytes())
    return preprocess(lake, run_id="it-matrix-replay")


def test_a_replayed_file_adds_nothing_to_either_feature_sink(
    lake: Settings, replayed: PreprocessResult
) -> None:
    # Every copy of a known event id (g1 twice, g2, g3) is skipped, not written nor quarantined.
    assert (replayed.features_rows, replayed.already_ingested) == (0, len(GOOD) + 1)
    bad_again = Counter(r for r in BAD.values() if r != "duplicate_key")
    assert replayed.quarantined_by_reason == dict(sorted(bad_again.items()))
    features = load_table(lake, lake.features_table).scan().to_pandas()
    assert sorted(features[lake.key_column]) == ["g1", "g2", "g3"]
    messages = [json.loads(m.data()) for m in _consume_from_earliest(lake, lake.features_topic)]
    assert sorted(m[lake.key_column] for m in messages) == ["g1", "g2", "g3"]


def test_the_flow_publishes_a_report_artifact(
    lake: Settings, replayed: PreprocessResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preprocess flow, run here against the Prefect server, on a partial replay: one row
    already ingested, one new, one bad."""
    _write(lake, "partial.csv", [GOOD[1], b"g4,5.5,2.5,4.0,1.3,1", b"b1,5.1,3.5,1.4,0.2,9"])
    for name, value in settings_env(lake).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        state = preprocess_flow(return_state=True)
    finally:
        get_settings.cache_clear()
    assert state.is_completed(), state
    result = state.result()
    assert (result["rows_read"], result["features_rows"], result["already_ingested"]) == (3, 1, 1)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    [report] = [a for a in artifacts if a.key == "preprocess-summary"]
    assert report.type == "markdown"
    for row in (
        "| rows read | 3 |",
        "| rows written (Iceberg features + Pulsar topic) | 1 |",
        "| already ingested (skipped) | 1 |",
        "| rows quarantined | 1 |",
        f"| Flink job | {result['job_id']} |",
        "| out_of_range:label | 1 |",
    ):
        assert row in report.data, report.data
    features = load_table(lake, lake.features_table).scan().to_pandas()
    assert sorted(features[lake.key_column]) == ["g1", "g2", "g3", "g4"]
