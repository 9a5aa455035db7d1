"""Preprocess with MLP_FLINK_MODE=session: the job is submitted to a Flink session cluster.

The module starts a session cluster of its own from the PyFlink distribution's scripts
(infra/flink_cluster.py, as `python -m infra.flink_cluster up` does) on free loopback ports, with
its configuration, logs and pid files in a temporary folder, and always stops it, checking that no
JVM of it remains. A cluster that does not start fails the tests; nothing is skipped.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.preprocess_stream import preprocess_stream
from infra.flink_cluster import (
    ClusterDirs,
    job_taskmanager,
    start_cluster,
)
from infra.processes import alive
from mlplatform.connectors.iceberg_tables import count_rows, ensure_tables, load_table
from mlplatform.connectors.pulsar_io import publish, read_all, topic_stats
from mlplatform.dataset.spec import SPEC_DIR
from mlplatform.preprocess import batch as preprocess_module
from mlplatform.preprocess.batch import FlinkJobError, preprocess
from mlplatform.preprocess.landing_files import Plan
from mlplatform.preprocess.stream import (
    LAKE,
    active_job,
    cancel_stream,
    job_name,
    run_counts,
    start_stream,
    stop_stream,
)
from mlplatform.sample_data.demo_rows import demo_events, write_demo_raw
from mlplatform.settings import Settings
from tasks.artifacts import preprocess_markdown
from tests.helpers import module_settings, settings_env, settings_in_process

pytestmark = pytest.mark.integration

VALID, MALFORMED = 100, 7


def _jobs(s: Settings) -> dict[str, str]:
    response = httpx.get(f"{s.flink_rest_url}/jobs/overview", timeout=10)
    response.raise_for_status()
    return {job["jid"]: job["state"] for job in response.json()["jobs"]}


def test_preprocess_runs_on_the_session_cluster(
    flink_session: tuple[Settings, ClusterDirs],
) -> None:
    s, _ = flink_session
    write_demo_raw(s, VALID, MALFORMED, seed=17)
    result = preprocess(s, run_id="flink-session-it")
    assert (result.files, result.features_rows, result.quarantined_rows) == (1, VALID, MALFORMED)
    assert result.job_id and _jobs(s)[result.job_id] == "FINISHED"
    assert result.flink_job_url == f"{s.flink_rest_url}/#/job/{result.job_id}"
    link = f"[{result.flink_job_url}]({result.flink_job_url})"
    assert f"| Flink UI | {link} |" in preprocess_markdown(result)  # the run's artifact
    assert sum(result.quarantined_by_reason.values()) == MALFORMED
    catalog = ensure_tables(s)
    assert count_rows(catalog.load_table(s.table_id(s.features_table))) == VALID
    quarantine = catalog.load_table(s.table_id(s.quarantine_table)).scan().to_arrow()
    assert quarantine.num_rows == MALFORMED
    assert all(quarantine.column("reason").to_pylist())
    messages = read_all(s, s.features_topic)
    assert len(messages) == VALID
    assert len({m.partition_key() for m in messages}) == VALID


def test_a_failing_job_fails_preprocess_with_flinks_error(
    flink_session: tuple[Settings, ClusterDirs], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that fails in the cluster (its source folder is gone) fails preprocess, and the
    error carries Flink's root cause from the cluster's REST API."""
    s, _ = flink_session
    missing = s.resolved_landing_dir / "gone"
    monkeypatch.setattr(preprocess_module, "claim_landing_files", lambda s, run_id: missing)
    source = {"format": "csv", "path": f"file://{missing}", "columns": s.dataset_spec.columns}
    plan = Plan(sources=[source], files=1, added={}, added_by={}, rejected={})
    monkeypatch.setattr(preprocess_module, "plan_sources", lambda *args: plan)
    before = _jobs(s)
    with pytest.raises(FlinkJobError) as raised:
        preprocess(s, run_id="flink-session-fail")
    message = str(raised.value)
    assert "root cause in the cluster" in message, message
    assert f"FileNotFoundException: File file:{missing} does not exist" in message, message
    failed = {jid: state for jid, state in _jobs(s).items() if jid not in before}
    assert list(failed.values()) == ["FAILED"], failed
    assert f"/#/job/{next(iter(failed))}" in message


def _wait_for(
    what: str,
    check: Callable[[], bool],
    timeout_s: float = 150,
    seen: Callable[[], object] | None = None,
) -> None:
    """Wait until check() holds; `seen` says on a timeout what there was instead."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            found = f" (found {seen()})" if seen else ""
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}{found}")
        time.sleep(1)


def _json(event: dict) -> bytes:
    return json.dumps(event).encode()


def _table(s: Settings, name: str) -> pa.Table:
    return load_table(s, name).scan().to_arrow()  # start_stream made the tables


def _cancel(s: Settings) -> None:
    if cancel_stream(s):
        ended = lambda: active_job(s) is None and active_job(s, LAKE) is None  # noqa: E731
        _wait_for("the cancelled jobs to end", ended, timeout_s=60)


def test_stream_mode_stops_with_a_savepoint_and_resumes_losing_and_doubling_nothing(
    flink_session: tuple[Settings, ClusterDirs],
) -> None:
    """Raw events on the raw-events topic in four batches: before the start, just before a
    stop with savepoint, while the job is stopped, and after the job was cancelled (as by a
    crash). Each start takes up where the last one left: the savepoint, then the newest
    retained checkpoint. Every valid event lands once in both feature sinks, every bad one once
    in the quarantine, and duplicates are caught across savepoints and checkpoints."""
    s = module_settings(
        flink_session[0],
        "flinkstream",
        flink_mode="session",
        flink_rest_url=flink_session[0].flink_rest_url,
        flink_checkpoint_interval_s=1.0,
        flink_lake_commit_interval_s=1.0,
        feature_window_s=2,
        watermark_delay_s=1,
    )
    a, b, c, d, trailer = (
        demo_events(s, n, p, seed=n)
        for n, p in [(50, "a"), (40, "b"), (30, "c"), (20, "d"), (1, "z")]
    )
    bad = {
        "not_json": b"not json at all",
        "empty_payload": b"",
        "not_utf8": b'{"event_id": "\xff"}',
        "missing_fields": json.dumps({"event_id": "m-1"}).encode(),
        "out_of_range:sepal_length": _json({**a[0], "event_id": "r-1", "sepal_length": 99.0}),
        "wrong_type:petal_width": _json({**a[0], "event_id": "t-1", "petal_width": "wide"}),
    }
    encode = lambda events: [_json(e) for e in events]  # noqa: E731
    features = lambda: _table(s, s.features_table).num_rows  # noqa: E731
    publish(s, s.raw_events_topic, encode(a) + list(bad.values()) + encode(a[:1]))
    first = start_stream(s, run_id="stream-1")
    try:
        assert first["resumed_from"] is None and not first["already_running"]
        assert start_stream(s, run_id="ignored")["already_running"]  # one job, not two
        _wait_for("the first batch in Iceberg", lambda: features() == 50, seen=features)
        publish(s, s.raw_events_topic, encode(b))
        savepoint = stop_stream(s)
        assert active_job(s) is None
        publish(s, s.raw_events_topic, encode(c) + encode([b[0], a[1]]))
        last_published = time.monotonic()
        second = start_stream(s, run_id="stream-2")
        assert second["resumed_from"] == savepoint
        _wait_for(
            "the second and third batches in Iceberg", lambda: features() == 120, seen=features
        )
        # A valid event later than the last window's end plus the delay moves the watermark
        # past it: 3 s after the last batch (window 2 s + delay 1 s), which is usually already
        # past. Its own window stays open.
        time.sleep(max(0.0, last_published + 3.0 - time.monotonic()))
        publish(s, s.raw_events_topic, encode(trailer))
        windowed = lambda: sum(_table(s, s.feature_windows_table)["row_count"].to_pylist())  # noqa: E731
        _wait_for("every valid event's window", lambda: windowed() == 120, seen=windowed)
        _wait_for("the quarantine", lambda: _table(s, s.quarantine_table).num_rows == 9)
        windows = _table(s, s.feature_windows_table).to_pandas()
        frame = _table(s, s.features_table).to_pandas()
        frame = frame[frame["event_id"] != trailer[0]["event_id"]]
        _cancel(s)  # no savepoint: the next start takes the newest retained checkpoint
        publish(s, s.raw_events_topic, encode(d) + encode(c[:1]))
        third = start_stream(s, run_id="stream-3")
        assert "/chk-" in third["resumed_from"], third
        _wait_for("the fourth batch in Iceberg", lambda: features() == 141, seen=features)
        _wait_for("the last duplicate", lambda: _table(s, s.quarantine_table).num_rows == 10)
        stop_stream(s)
    finally:
        _cancel(s)
    ids = {e["event_id"] for e in a + b + c + d + trailer}
    assert sorted(_table(s, s.features_table)["event_id"].to_pylist()) == sorted(ids)
    messages = read_all(s, s.features_topic)
    # Each once on the topic. The job sets the key as bytes, so Pulsar hands it back in base64.
    assert sorted(base64.b64decode(m.partition_key()).decode() for m in messages) == sorted(ids)
    quarantine = _table(s, s.quarantine_table).to_pylist()
    reasons = sorted(r["reason"] for r in quarantine)
    assert reasons == sorted([*bad, *["duplicate_key"] * 4])
    assert {r["raw"] for r in quarantine if r["reason"] == "duplicate_key"} == {
        json.dumps(e) for e in (a[0], b[0], a[1], c[0])
    }  # a[1], b[0] came before the savepoint and c[0] before the checkpoint: state carried
    counts = [run_counts(s, run) for run in ("stream-1", "stream-2", "stream-3")]
    assert sum(c.get("written", 0) for c in counts) == 141
    assert sum(c.get("duplicate_key", 0) for c in counts) == 4
    assert counts[0]["written"] >= 50 and counts[2]["written"] >= 20
    # Added by the job: the derived features, the event time (publish time) and its date.
    assert frame["petal_area"].to_numpy() == pytest.approx(
        (frame["petal_length"] * frame["petal_width"]).to_numpy()
    )
    assert (frame["event_date"] == frame["event_time"].dt.date).all()
    assert frame["event_time"].notna().all()
    # Windows (as of the first 120 rows): per label, the counts add up to the label's rows and
    # the means agree.
    for label, rows in frame.groupby("label"):
        mine = windows[windows["label"] == label]
        assert mine["row_count"].sum() == len(rows)
        mean = (mine["mean_sepal_length"] * mine["row_count"]).sum() / len(rows)
        assert mean == pytest.approx(rows["sepal_length"].mean())


def test_stream_mode_forgets_event_ids_after_the_dedup_horizon(
    flink_session: tuple[Settings, ClusterDirs],
) -> None:
    """An event id is remembered for MLP_FLINK_DEDUP_HORIZON_S: a repeat within it is
    quarantined as duplicate_key, a repeat after it is written again (the state is bounded)."""
    s = module_settings(
        flink_session[0],
        "flinkhorizon",
        flink_mode="session",
        flink_rest_url=flink_session[0].flink_rest_url,
        flink_checkpoint_interval_s=1.0,
        flink_lake_commit_interval_s=1.0,
        flink_dedup_horizon_s=4.0,
    )
    events = demo_events(s, 5, "h", seed=5)
    # The real-time job's decisions, timed on its topics (the lake copies them later).
    on_topic = lambda topic: topic_stats(s, topic)["messages_in"]  # noqa: E731
    start_stream(s, run_id="stream-horizon")
    try:
        # After the start: the real-time job is submitted first and checks what is there at
        # once, maybe more than the horizon before start_stream returns.
        publish(s, s.raw_events_topic, [_json(e) for e in events])
        _wait_for("the events checked", lambda: on_topic(s.features_topic) == 5)
        published = time.monotonic()
        publish(s, s.raw_events_topic, [_json(events[0])])  # within the horizon
        _wait_for("the repeat quarantined", lambda: on_topic(s.quarantine_topic) == 1)
        assert time.monotonic() - published < 4.0, "the repeat came late: the test proves nothing"
        time.sleep(max(0.0, published + 6.0 - time.monotonic()))  # past the horizon
        publish(s, s.raw_events_topic, [_json(events[1])])
        _wait_for("the forgotten id written again", lambda: on_topic(s.features_topic) == 6)
        lake = (s.features_table, s.quarantine_table)
        _wait_for("the lake's copy", lambda: [_table(s, t).num_rows for t in lake] == [6, 1])
        stop_stream(s)
    finally:
        _cancel(s)
    ids = _table(s, s.features_table)["event_id"].to_pylist()
    assert sorted(ids) == sorted([e["event_id"] for e in events] + [events[1]["event_id"]])
    assert _table(s, s.quarantine_table)["reason"].to_pylist() == ["duplicate_key"]


def _checkpoints(s: Settings, job_id: str) -> dict:
    response = httpx.get(f"{s.flink_rest_url}/jobs/{job_id}/checkpoints", timeout=10)
    response.raise_for_status()
    return response.json()


def _keys(s: Settings) -> list[str]:
    """The features topic's message keys (event ids), as a consumer sees them: committed only."""
    return [base64.b64decode(m.partition_key()).decode() for m in read_all(s, s.features_topic)]


def test_a_killed_task_manager_loses_and_doubles_nothing(
    flink_session: tuple[Settings, ClusterDirs],
) -> None:
    """kill -9 of the TaskManager just after the job published a batch to the features topic in
    a transaction no checkpoint has committed yet. `start_cluster` starts a new TaskManager, the
    job restarts from its last checkpoint and publishes the batch again; the first copy never
    becomes visible (the broker aborts its transaction). Every valid event is once in Iceberg
    and once on the topic, although the broker took the batch twice."""
    s = module_settings(
        flink_session[0],
        "flinkkill",
        flink_mode="session",
        flink_rest_url=flink_session[0].flink_rest_url,
        flink_checkpoint_interval_s=5.0,
        flink_lake_commit_interval_s=1.0,
        flink_transaction_timeout_s=15.0,
        flink_stream_delivery="exactly-once",
    )
    dirs = flink_session[1]
    a, b = demo_events(s, 60, "ka", seed=3), demo_events(s, 40, "kb", seed=4)
    features = lambda: _table(s, s.features_table).num_rows  # noqa: E731
    publish(s, s.raw_events_topic, [_json(e) for e in a])
    job_id = start_stream(s, run_id="stream-kill")["job_id"]
    try:
        _wait_for("the first batch in Iceberg", lambda: features() == 60)
        _wait_for("the first batch on the topic", lambda: len(_keys(s)) == 60)
        assert topic_stats(s, s.features_topic)["messages_in"] == 60
        # Just after a checkpoint, so the next one (5 s on) comes after the kill.
        completed = lambda: _checkpoints(s, job_id)["counts"]["completed"]  # noqa: E731
        done = completed()
        _wait_for("a checkpoint", lambda: completed() > done)
        done = completed()
        publish(s, s.raw_events_topic, [_json(e) for e in b])
        _wait_for(
            "the second batch sent", lambda: topic_stats(s, s.features_topic)["messages_in"] == 100
        )
        taskmanager = job_taskmanager(s, dirs, job_id)
        os.kill(taskmanager, signal.SIGKILL)
        # SIGKILL is delivered at once, but a large JVM takes a moment to exit.
        _wait_for("the TaskManager gone", lambda: not alive(taskmanager))
        assert completed() == done, "a checkpoint came before the kill: the test proves nothing"
        assert len(_keys(s)) == 60  # sent, not committed (the transaction is open)
        assert "new TaskManager" in start_cluster(s, dirs)
        _wait_for("the second batch in Iceberg", lambda: features() == 100)
        _wait_for("the second batch on the topic", lambda: len(_keys(s)) == 100)
        stop_stream(s)
    finally:
        _cancel(s)
    ids = sorted(e["event_id"] for e in a + b)
    assert sorted(_table(s, s.features_table)["event_id"].to_pylist()) == ids
    assert sorted(_keys(s)) == ids
    published = topic_stats(s, s.features_topic)["messages_in"]
    assert published == 140  # the second batch twice, once visible


def test_the_stream_flow_runs_the_job_for_a_while_and_reports_the_run(
    flink_session: tuple[Settings, ClusterDirs], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The preprocess-stream flow, run against the Prefect server: start, run, stop with a
    savepoint, and the run's report as an artifact. Meanwhile the stream job of a second
    dataset (a spec file of the user's own, Settings.for_dataset) runs beside it on the same
    cluster and broker, each job on its own topics and tables."""
    s = module_settings(flink_session[0], "flinkstreamflow")
    spec = json.loads((SPEC_DIR / "iris.json").read_text())
    path = tmp_path / "flowers.json"
    path.write_text(json.dumps({**spec, "name": "flowers", "key_column": "flower_id"}))
    other = s.for_dataset(str(path))
    publish(s, s.raw_events_topic, [_json(e) for e in demo_events(s, 12, "f")] + [b"{"])
    publish(other, other.raw_events_topic, [_json(e) for e in demo_events(other, 9, "w")])
    beside = start_stream(other, "flowers-beside")  # runs while the flow's job starts and stops
    env = {**settings_env(s), "MLP_FLINK_MODE": "session", "MLP_FLINK_REST_URL": s.flink_rest_url}
    try:
        with settings_in_process(monkeypatch, env):
            state = preprocess_stream(action="run", run_for_s=20.0, return_state=True)
        other_rows = lambda: _table(other, other.features_table).num_rows  # noqa: E731
        _wait_for("the other dataset's events in its own table", lambda: other_rows() == 9)
        stop_stream(other)
    finally:
        _cancel(s)
        _cancel(other)
    assert state.is_completed(), state
    report = state.result()
    assert report["start"]["resumed_from"] is None
    assert report["stop"]["features_rows"] == 12
    assert report["stop"]["quarantined_by_reason"] == {"not_json": 1}
    assert active_job(s) is None
    jobs = httpx.get(f"{s.flink_rest_url}/jobs/overview", timeout=10).json()["jobs"]
    [iris_job] = [j for j in jobs if j["name"] == job_name(s)]
    [other_job] = [j for j in jobs if j["name"] == job_name(other)]
    assert other_job["start-time"] < iris_job["start-time"] < iris_job["end-time"]
    assert other_job["end-time"] > iris_job["end-time"]  # both jobs ran at once
    assert beside["job_id"] == other_job["jid"] and other.namespace == f"{s.namespace}_flowers"
    assert sorted(_keys(other)) == sorted(f"w-{i}" for i in range(9))  # its topic: its own
    assert _table(s, s.features_table).num_rows == 12  # and Iris's table holds none of its rows
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    [artifact] = [a for a in artifacts if a.key == "preprocess-summary"]
    assert "| rows written (Iceberg features + Pulsar topic) | 12 |" in artifact.data
