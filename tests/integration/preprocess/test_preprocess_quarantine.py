"""Flink preprocessing in depth, on the real services (Flink local mini-cluster, Pulsar, Iceberg):
the bad-row matrix (one row per quarantine reason, into the Iceberg quarantine table and the
Pulsar quarantine topic) for CSV, JSON lines and Parquet files in one run, replays that add
nothing to either feature sink, and the run's Prefect artifact.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pulsar
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.preprocess import preprocess as preprocess_flow
from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.connectors.pulsar_io import make_client, receive_batch
from mlplatform.preprocess.batch import PreprocessResult, preprocess
from mlplatform.sample_data.demo_rows import header
from mlplatform.settings import Settings
from tests.helpers import module_settings, settings_env, settings_in_process

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


COLUMNS = ["event_id", "sepal_length", "sepal_width", "petal_length", "petal_width", "label"]


def _json(values: list, **changes: object) -> bytes:
    row = dict(zip(COLUMNS, values, strict=True)) | changes
    return json.dumps({k: v for k, v in row.items() if v is not ...}).encode()


GOOD_JSON = [_json(["j1", 5.0, 3.4, 1.5, 0.2, 0]), _json(["j2", 6.0, 2.9, 4.5, 1.5, 1])]
# JSON lines, the same checks and reasons; JSON's own types make wrong_type and not_json.
BAD_JSON = {
    _json(["jm", 5.1, 3.5, 1.4, 0.2, 0], petal_width=...): "missing_fields",
    _json(["jx", 5.1, 3.5, 1.4, 0.2, 0], colour="red"): "extra_fields",
    _json(["js", "5.1", 3.5, 1.4, 0.2, 0]): "wrong_type:sepal_length",
    _json(["jb", 5.1, True, 1.4, 0.2, 0]): "wrong_type:sepal_width",
    _json(["jo", 5.1, 3.5, 1.4, {"cm": 0.2}, 0]): "wrong_type:petal_width",
    _json(["jn", 5.1, None, 1.4, 0.2, 0]): "missing_value:sepal_width",
    _json(["ji", 5.1, 3.5, 1.4, 0.2, 1.5]): "not_an_integer:label",
    _json(["jf", "NaN", 3.5, 1.4, 0.2, 0]): "not_finite:sepal_length",
    _json(["jr", 5.1, 3.5, 99, 0.2, 0]): "out_of_range:petal_length",
    b'{"event_id": "jj", "sepal_length": 5.1': "not_json",
    b"[1, 2, 3]": "not_json",
}
# Parquet rows by key (the file's schema fits): the value checks apply to them too.
PARQUET = {
    "p1": ([5.2, 3.6, 1.3, 0.3, 2], None),
    "p2": ([float("nan"), 3.0, 5.0, 1.8, 2], "not_finite:sepal_length"),
    "p3": ([5.0, None, 1.4, 0.2, 0], "missing_value:sepal_width"),
    "p4": ([5.0, 3.3, 1.4, 0.2, 9], "out_of_range:label"),
    "p5": ([5.0, 3.3, 30.5, 0.2, 1], "out_of_range:petal_length"),
}
BAD_PARQUET = {key: reason for key, (_, reason) in PARQUET.items() if reason}
ALL_REASONS = Counter(BAD.values()) + Counter(BAD_JSON.values()) + Counter(BAD_PARQUET.values())
GOOD_KEYS = ["g1", "g2", "g3", "j1", "j2", "p1"]


def _write_parquet(s: Settings, name: str) -> None:
    columns = list(zip(*(values for values, _ in PARQUET.values()), strict=True))
    table = pa.table(
        {"event_id": list(PARQUET)}
        | {c: pa.array(v, pa.float64()) for c, v in zip(COLUMNS[1:5], columns[:4], strict=True)}
        | {"label": pa.array(columns[4], pa.int64())}
    )
    pq.write_table(table, s.resolved_landing_dir / name)


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


@dataclass(frozen=True)
class Sinks:
    """What a run left in the four sinks, read right after it: later runs of this module add
    to them, and the tests run in any order."""

    features: pd.DataFrame
    feature_messages: list[dict]
    quarantine: pd.DataFrame
    quarantine_messages: list[dict]


def _sinks(s: Settings, quarantine_topic: bool = True) -> Sinks:
    """The sinks now (the quarantine topic left out, as [], when not `quarantine_topic`)."""

    def messages(topic: str) -> list[dict]:
        return [json.loads(m.data()) for m in _consume_from_earliest(s, topic)]

    return Sinks(
        load_table(s, s.features_table).scan().to_pandas(),
        messages(s.features_topic),
        load_table(s, s.quarantine_table).scan().to_pandas(),
        messages(s.quarantine_topic) if quarantine_topic else [],
    )


@dataclass(frozen=True)
class Run:
    result: PreprocessResult
    sinks: Sinks


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    return module_settings(isolated, "quarantine", max_line_bytes=MAX_LINE_BYTES)


@pytest.fixture(scope="module")
def first_run(lake: Settings) -> Run:
    # Good and bad rows interleaved, the duplicate after its first occurrence.
    lines = [GOOD[0], *list(BAD)[:8], GOOD[1], *list(BAD)[8:], GOOD[2]]
    _write(lake, "matrix.csv", lines)
    json_lines = [GOOD_JSON[0], *list(BAD_JSON)[:5], GOOD_JSON[1], *list(BAD_JSON)[5:]]
    (lake.resolved_landing_dir / "matrix.jsonl").write_bytes(b"\n".join(json_lines) + b"\n")
    _write_parquet(lake, "matrix.parquet")
    return Run(preprocess(lake, run_id="it-matrix"), _sinks(lake))


def test_every_row_is_accounted_for_by_reason(first_run: Run) -> None:
    result = first_run.result
    assert result.files == 3
    total = len(GOOD) + len(BAD) + len(GOOD_JSON) + len(BAD_JSON) + len(PARQUET)
    assert result.rows_read == total
    assert (result.features_rows, result.already_ingested) == (len(GOOD_KEYS), 0)
    assert result.quarantined_by_reason == dict(sorted(ALL_REASONS.items()))
    assert result.quarantined_rows == sum(ALL_REASONS.values())


def test_each_bad_row_is_in_the_quarantine_table_with_its_reason(first_run: Run) -> None:
    rows = first_run.sinks.quarantine
    assert rows["quarantined_at"].notna().all()
    csv = rows[rows["source"].str.endswith("/matrix.csv")]
    assert dict(zip(csv["raw"], csv["reason"], strict=True)) == {
        _shown(raw): reason for raw, reason in BAD.items()
    }
    jsonl = rows[rows["source"].str.endswith("/matrix.jsonl")]
    assert dict(zip(jsonl["raw"], jsonl["reason"], strict=True)) == {
        raw.decode(): reason for raw, reason in BAD_JSON.items()
    }
    # A Parquet row is quarantined as the JSON line it was read as, beside its file.
    parquet = rows[rows["source"].str.endswith("/matrix.parquet.jsonl")]
    pairs = zip(parquet["raw"], parquet["reason"], strict=True)
    by_key = {json.loads(raw)["event_id"]: reason for raw, reason in pairs}
    assert by_key == BAD_PARQUET
    assert (
        json.loads(parquet["raw"][parquet["reason"] == "not_finite:sepal_length"].iloc[0])[
            "sepal_length"
        ]
        == "NaN"
    )
    assert len(rows) == len(csv) + len(jsonl) + len(parquet)


def test_each_bad_row_is_on_the_quarantine_topic_with_its_exact_bytes(first_run: Run) -> None:
    messages = first_run.sinks.quarantine_messages
    assert Counter(m["reason"] for m in messages) == ALL_REASONS
    messages = [m for m in messages if m["source"].endswith("/matrix.csv")]
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


def test_good_rows_land_in_both_feature_sinks(lake: Settings, first_run: Run) -> None:
    features = first_run.sinks.features
    assert sorted(features[lake.key_column]) == GOOD_KEYS
    by_key = features.set_index(lake.key_column)
    assert by_key.loc["g1", "sepal_length"] == 5.0  # the first g1
    assert by_key.loc["j2", "petal_width"] == 1.5 and by_key.loc["p1", "label"] == 2
    messages = first_run.sinks.feature_messages
    assert sorted(m[lake.key_column] for m in messages) == GOOD_KEYS
    labels = {m[lake.key_column]: m["label"] for m in messages}
    assert labels == {"g1": 0, "g2": 1, "g3": 2, "j1": 0, "j2": 1, "p1": 2}


@pytest.fixture(scope="module")
def replayed(lake: Settings, first_run: Run) -> Run:
    [processed] = (lake.resolved_landing_dir / "_processed" / "it-matrix").rglob("matrix.csv")
    (lake.resolved_landing_dir / "matrix.csv").write_bytes(processed.read_bytes())
    return Run(preprocess(lake, run_id="it-matrix-replay"), _sinks(lake, quarantine_topic=False))


def test_a_replayed_file_adds_nothing_to_either_feature_sink(lake: Settings, replayed: Run) -> None:
    # Every copy of a known event id (g1 twice, g2, g3) is skipped, not written nor quarantined.
    result = replayed.result
    assert (result.features_rows, result.already_ingested) == (0, len(GOOD) + 1)
    bad_again = Counter(r for r in BAD.values() if r != "duplicate_key")
    assert result.quarantined_by_reason == dict(sorted(bad_again.items()))
    assert sorted(replayed.sinks.features[lake.key_column]) == GOOD_KEYS
    messages = replayed.sinks.feature_messages
    assert sorted(m[lake.key_column] for m in messages) == GOOD_KEYS


def test_a_replay_older_than_the_window_is_quarantined_not_checked(isolated: Settings) -> None:
    """The replay check reads only the window's event dates: a file dated 40 days back is
    written under a 60-day window, and the same file landed again (same modification time)
    under a 30-day window is quarantined as outside_replay_window, never written twice."""
    s = module_settings(isolated, "window", replay_window_days=60)
    aged = time.time() - 40 * 86400
    path = _write(s, "aged.csv", [b"a1,5.0,3.5,1.4,0.2,0", b"a2,6.1,2.8,4.7,1.2,1"])
    os.utime(path, (aged, aged))
    first = preprocess(s, run_id="it-aged")
    assert (first.features_rows, first.quarantined_rows) == (2, 0)
    features = load_table(s, s.features_table).scan().to_pandas()
    assert set(features["event_date"]) == {datetime.fromtimestamp(aged, UTC).date()}
    [processed] = (s.resolved_landing_dir / "_processed" / "it-aged").rglob("aged.csv")
    shutil.copy2(processed, s.resolved_landing_dir / "aged.csv")  # as `cp -p` lands it again
    narrow = s.model_copy(update={"replay_window_days": 30})
    replay = preprocess(narrow, run_id="it-aged-replay")
    assert (replay.features_rows, replay.already_ingested) == (0, 0)
    assert replay.quarantined_by_reason == {"outside_replay_window": 2}
    assert len(load_table(s, s.features_table).scan().to_pandas()) == 2
    quarantined = load_table(s, s.quarantine_table).scan().to_pandas()
    assert sorted(quarantined["reason"]) == ["outside_replay_window"] * 2


def test_the_flow_publishes_a_report_artifact(
    lake: Settings, replayed: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preprocess flow, run here against the Prefect server, on a partial replay: one row
    already ingested, one new, one bad."""
    _write(lake, "partial.csv", [GOOD[1], b"g4,5.5,2.5,4.0,1.3,1", b"b1,5.1,3.5,1.4,0.2,9"])
    with settings_in_process(monkeypatch, settings_env(lake)):
        state = preprocess_flow(return_state=True)
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
    assert sorted(features[lake.key_column]) == sorted([*GOOD_KEYS, "g4"])
