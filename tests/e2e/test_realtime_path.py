"""The real-time path end to end, raw event to prediction: the Flink stream job on a session
cluster of this module's own, with its default at-least-once delivery, and the stream actors on
Ray. A killed TaskManager makes the job publish again what it had sent since its last
checkpoint; the consumers drop those repeats, whether their originals were answered before the
crash (the committed source marks) or after it (the marks in memory), so the predictions topic
and the Iceberg table hold exactly one result per event."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.realtime import realtime
from infra.flink_cluster import ClusterDirs, job_taskmanager, start_cluster
from infra.processes import alive
from infra.services import SERVICES, start, stop
from mlplatform.connectors.iceberg_tables import ensure_tables, load_table
from mlplatform.connectors.pulsar_io import publish, read_all, topic_stats
from mlplatform.inference.stream.partitions import reading_pids
from mlplatform.inference.stream.runner import run_stream_inference
from mlplatform.ops.live_view import live_view
from mlplatform.preprocess.stream import active_job, cancel_stream, start_stream, stop_stream
from mlplatform.sample_data.demo_rows import demo_events
from mlplatform.sample_data.synthetic_features import feature_rows
from mlplatform.settings import Settings
from mlplatform.training.retrain import retrain
from tasks.realtime import artifact_key
from tests.helpers import module_settings, settings_env, settings_in_process

pytestmark = pytest.mark.e2e


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


def _completed_checkpoints(s: Settings, job_id: str) -> int:
    response = httpx.get(f"{s.flink_rest_url}/jobs/{job_id}/checkpoints", timeout=10)
    response.raise_for_status()
    return response.json()["counts"]["completed"]


def _checkpoint_now(s: Settings, job_id: str) -> None:
    """Trigger a checkpoint (asked again while the job restarts) and wait until it completes."""
    done = _completed_checkpoints(s, job_id)

    def completed() -> bool:
        if _completed_checkpoints(s, job_id) > done:
            return True
        httpx.post(f"{s.flink_rest_url}/jobs/{job_id}/checkpoints", json={}, timeout=10)
        return False

    _wait_for("a checkpoint", completed)


def _published(s: Settings, topic: str) -> int:
    return topic_stats(s, topic)["messages_in"]


def _answered(s: Settings) -> tuple[list[str], list[str]]:
    """The event ids on the predictions topic and in the stream predictions table."""
    on_topic = [json.loads(m.data())[s.key_column] for m in read_all(s, s.predictions_topic)]
    table = load_table(s, s.stream_predictions_table).scan().to_arrow()
    return on_topic, table[s.key_column].to_pylist()


@pytest.fixture(scope="module")
def registry(flink_session: tuple[Settings, ClusterDirs]) -> str:
    """The module's model registry (a database of its own) with a champion, trained once on a
    table of its own: each test's features table is its stream job's."""
    s = module_settings(flink_session[0], "realtimemodel")
    training = s.model_copy(update={"features_table": "training_rows"})
    ensure_tables(training)
    load_table(training, "training_rows").append(feature_rows(training, 600, seed=8))
    assert retrain(training).decision == "promote"
    return s.database_url


def _settings(
    flink_session: tuple[Settings, ClusterDirs], registry: str, name: str, **overrides: object
) -> Settings:
    """A test's own topics and tables, on the module's cluster and registry; frequent commits."""
    return module_settings(
        flink_session[0],
        name,
        flink_mode="session",
        flink_rest_url=flink_session[0].flink_rest_url,
        stream_commit_interval_s=0.5,
        flink_lake_commit_interval_s=1.0,
        database_url=registry,
        **overrides,
    )


def test_a_killed_task_manager_repeats_rows_and_predictions_stay_exactly_once(
    flink_session: tuple[Settings, ClusterDirs], registry: str
) -> None:
    s = _settings(
        flink_session,
        registry,
        "realtimetm",
        # Checkpoints when the test asks for them only (a periodic one comes after a day).
        flink_checkpoint_interval_s=86_400.0,
        flink_transaction_timeout_s=3 * 86_400.0,
    )
    assert s.flink_stream_delivery == "at-least-once"  # the default under test

    first, answered, unanswered = (
        demo_events(s, 60, "ra", seed=5),
        demo_events(s, 20, "rb", seed=6),
        demo_events(s, 20, "rc", seed=7),
    )
    publish(s, s.raw_events_topic, [json.dumps(e).encode() for e in first])
    job_id = start_stream(s, run_id="realtime-kill")["job_id"]
    try:
        features = lambda: load_table(s, s.features_table).scan().to_arrow().num_rows  # noqa: E731
        # A checkpoint covers the first batch, so it is never published again.
        _wait_for("the first batch sent", lambda: _published(s, s.features_topic) == 60)
        _checkpoint_now(s, job_id)
        _wait_for("the first batch in Iceberg", lambda: features() == 60)
        done = _completed_checkpoints(s, job_id)
        assert run_stream_inference(s, max_messages=60, timeout_s=120).published == 60
        # Answered, committed and acknowledged before the crash; then published, not answered.
        publish(s, s.raw_events_topic, [json.dumps(e).encode() for e in answered])
        _wait_for("the answered batch sent", lambda: _published(s, s.features_topic) == 80)
        assert run_stream_inference(s, max_messages=20, timeout_s=120).published == 20
        publish(s, s.raw_events_topic, [json.dumps(e).encode() for e in unanswered])
        _wait_for("the unanswered batch sent", lambda: _published(s, s.features_topic) == 100)
        taskmanager = job_taskmanager(s, flink_session[1], job_id)
        os.kill(taskmanager, signal.SIGKILL)
        _wait_for("the TaskManager gone", lambda: not alive(taskmanager))
        assert _completed_checkpoints(s, job_id) == done  # else nothing would be repeated
        assert "new TaskManager" in start_cluster(s, flink_session[1])
        # The 40 rows since the checkpoint, published again: the topic holds them twice.
        _wait_for("the repeats sent", lambda: _published(s, s.features_topic) == 140)
        _checkpoint_now(s, job_id)
        _wait_for("the rows since the checkpoint in Iceberg", lambda: features() == 100)
        keys = Counter(m.partition_key() for m in read_all(s, s.features_topic))
        assert len(keys) == 100 and sorted(Counter(keys.values()).items()) == [(1, 60), (2, 40)]
        stop_stream(s)
    finally:
        cancel_stream(s)
    # The unanswered batch's originals and every repeat come to new actors.
    last = run_stream_inference(s, max_messages=None, timeout_s=15)
    assert last.published == 20
    assert topic_stats(s, s.features_topic)["backlog"].get(s.stream_subscription, 0) == 0
    ids = sorted(e["event_id"] for e in first + answered + unanswered)
    on_topic, in_table = _answered(s)
    assert sorted(on_topic) == ids
    assert sorted(in_table) == ids
    # Each prediction carries its raw event's time: the live view measures the whole path.
    view = live_view(s, window_s=900)
    assert view.predictions == len(ids) and 0 < view.latency_ms["p50"] <= view.latency_ms["max"]


def _consume_in_background(
    s: Settings, max_messages: int, timeout_s: float
) -> tuple[threading.Thread, dict[str, object]]:
    """A stream inference run in a thread, once its actor reads; its result (or error) goes
    into the dict under "result"."""
    outcome: dict[str, object] = {}

    def consume() -> None:
        try:
            outcome["result"] = run_stream_inference(s, max_messages, timeout_s)
        except BaseException as error:  # reported by the caller's assertion
            outcome["result"] = error

    consumer = threading.Thread(target=consume)
    consumer.start()
    _wait_for("the consumer actor", lambda: len(reading_pids(s)) == 1)
    return consumer, outcome


def _bad_events(s: Settings, n: int) -> list[bytes]:
    """Raw events the job quarantines: out of range, a feature missing, not JSON, in turn."""
    bad = []
    for i, event in enumerate(demo_events(s, n, "bad", seed=9)):
        feature = s.feature_columns[0]
        if i % 3 == 0:
            bad.append(json.dumps({**event, feature: -1000.0}).encode())
        elif i % 3 == 1:
            bad.append(json.dumps({k: v for k, v in event.items() if k != feature}).encode())
        else:
            bad.append(b'{"broken": ')
    return bad


def test_kills_at_seeded_random_moments_lose_and_double_nothing(
    flink_session: tuple[Settings, ClusterDirs], registry: str
) -> None:
    """Events stream in while the TaskManager and the consumer actor are each killed with
    SIGKILL at a seeded random moment: every valid event's prediction once on the topic and
    once in Iceberg, and the quarantine holds every bad event once."""
    seed = int(os.environ.get("MLP_TEST_SEED", "2026"))
    rng = random.Random(seed)
    print(f"seed {seed} (MLP_TEST_SEED repeats it)")
    s = _settings(
        flink_session,
        registry,
        "realtimekills",
        flink_checkpoint_interval_s=3.0,
        flink_transaction_timeout_s=9.0,
    )
    good = [json.dumps(e).encode() for e in demo_events(s, 1500, "live", seed=10)]
    bad = _bad_events(s, 30)
    stream = good[:]
    for payload in bad:  # spread among the valid ones
        stream.insert(rng.randrange(len(stream) + 1), payload)
    job_id = start_stream(s, run_id="realtime-kills")["job_id"]
    consumer, outcome = _consume_in_background(s, len(good), timeout_s=300)
    try:
        kills = sorted([(rng.uniform(2, 8), "taskmanager"), (rng.uniform(2, 8), "consumer")])
        # About 150 events/s, in slices (publish() sends as fast as it can).
        began = time.monotonic()
        for i in range(0, len(stream), 15):
            publish(s, s.raw_events_topic, stream[i : i + 15])
            while kills and time.monotonic() - began >= kills[0][0]:
                _, what = kills.pop(0)
                print(f"kill -9 of the {what} at {time.monotonic() - began:.1f} s")
                if what == "consumer":
                    [pid] = reading_pids(s)
                    os.kill(pid, signal.SIGKILL)
                else:
                    pid = job_taskmanager(s, flink_session[1], job_id)
                    os.kill(pid, signal.SIGKILL)
                    _wait_for("the TaskManager gone", lambda pid=pid: not alive(pid))
                    start_cluster(s, flink_session[1])
            time.sleep(max(0.0, began + (i + 15) / 150 - time.monotonic()))
        consumer.join(timeout=330)
        assert not isinstance(outcome.get("result"), BaseException), outcome
        assert outcome["result"].actor_restarts >= 1  # type: ignore[union-attr]
        _checkpoint_now(s, job_id)
        features = lambda: load_table(s, s.features_table).scan().to_arrow().num_rows  # noqa: E731
        _wait_for("every valid event in Iceberg", lambda: features() == len(good))
        stop_stream(s)
    finally:
        cancel_stream(s)
    ids = sorted(json.loads(p)["event_id"] for p in good)
    on_topic, in_table = _answered(s)
    assert sorted(on_topic) == ids
    assert sorted(in_table) == ids
    quarantined = load_table(s, s.quarantine_table).scan().to_arrow()
    assert quarantined.num_rows == len(bad)
    reasons = Counter(quarantined["reason"].to_pylist())
    feature = s.feature_columns[0]
    assert reasons == {f"out_of_range:{feature}": 10, "missing_fields": 10, "not_json": 10}


def _flink_restarted(s: Settings, job_id: str) -> bool:
    """Whether the job has ever restarted (the time it last entered RESTARTING, 0 if never)."""
    job = httpx.get(f"{s.flink_rest_url}/jobs/{job_id}", timeout=10).json()
    return job["timestamps"]["RESTARTING"] > 0


def test_a_slow_consumer_and_a_restarted_broker_lose_and_double_nothing(
    flink_session: tuple[Settings, ClusterDirs], registry: str
) -> None:
    """The consumer lags (a predictor of the test's own sleeps per micro-batch): the Flink job
    runs ahead of it, publishing every valid event once, none dropped or doubled, without a
    restart. Then the broker is stopped and started again while events stream in: every valid
    event's prediction once on the topic and once in Iceberg."""
    s = _settings(
        flink_session,
        registry,
        "realtimebroker",
        flink_checkpoint_interval_s=3.0,
        flink_transaction_timeout_s=9.0,
        predictor_class="tests/e2e/slow_predictor.py:Slow",
        predictor_options={"sleep_s": 0.1},
        stream_batch_max=10,
    )
    first = [json.dumps(e).encode() for e in demo_events(s, 600, "slow", seed=12)]
    second = [json.dumps(e).encode() for e in demo_events(s, 400, "broker", seed=13)]
    job_id = start_stream(s, run_id="realtime-broker")["job_id"]
    consumer, outcome = _consume_in_background(s, len(first) + len(second), timeout_s=400)
    try:
        publish(s, s.raw_events_topic, first)
        _wait_for("the first events published", lambda: _published(s, s.features_topic) == 600)
        backlog = topic_stats(s, s.features_topic)["backlog"][s.stream_subscription]
        assert backlog > 0, "the consumer kept up: nothing here tests a slow one"
        keys = Counter(json.loads(m.data())["event_id"] for m in read_all(s, s.features_topic))
        assert sorted(keys) == sorted(json.loads(e)["event_id"] for e in first)
        assert set(keys.values()) == {1}, "the Flink job doubled rows"
        assert not _flink_restarted(s, job_id)
        # The broker restarted while events and their predictions are on their way.
        publish(s, s.raw_events_topic, second[:200])
        backlog = topic_stats(s, s.features_topic)["backlog"][s.stream_subscription]
        assert backlog > 0, "nothing in flight when the broker stops: the test proves little"
        pulsar = SERVICES["pulsar"]
        stop(pulsar, s)
        assert "started" in start(pulsar, s)
        publish(s, s.raw_events_topic, second[200:])
        consumer.join(timeout=430)
        assert not isinstance(outcome.get("result"), BaseException), outcome
        _checkpoint_now(s, job_id)
        features = lambda: load_table(s, s.features_table).scan().to_arrow().num_rows  # noqa: E731
        _wait_for("every valid event in Iceberg", lambda: features() == 1000)
        stop_stream(s)
    finally:
        start(SERVICES["pulsar"], s)  # up again whatever happened above
        cancel_stream(s)
    ids = sorted(json.loads(p)["event_id"] for p in first + second)
    on_topic, in_table = _answered(s)
    assert sorted(on_topic) == ids
    assert sorted(in_table) == ids


def test_the_realtime_flow_runs_the_path_and_updates_its_live_view(
    flink_session: tuple[Settings, ClusterDirs], registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The realtime flow against the Prefect server: the stream job and the actors in one run,
    the live view artifact published while it runs (with the predictions of the events sent
    meanwhile), and the job stopped with a savepoint at the end."""
    s = _settings(flink_session, registry, "realtimeflow")
    events = [json.dumps(e).encode() for e in demo_events(s, 200, "flow", seed=11)]
    env = {**settings_env(s), "MLP_FLINK_MODE": "session", "MLP_FLINK_REST_URL": s.flink_rest_url}

    def send_while_it_runs() -> None:
        _wait_for("the stream job", lambda: active_job(s) is not None)
        for i in range(0, len(events), 20):
            publish(s, s.raw_events_topic, events[i : i + 20])
            time.sleep(0.5)

    sender = threading.Thread(target=send_while_it_runs)
    sender.start()
    try:
        with settings_in_process(monkeypatch, env):
            state = realtime(timeout_s=20.0, view_every_s=4.0, stop_job=True, return_state=True)
    finally:
        sender.join(timeout=120)
        cancel_stream(s)
    assert state.is_completed(), state
    report = state.result()
    assert report["stream"]["published"] == len(events)
    assert report["stopped"]["features_rows"] == len(events)
    assert active_job(s) is None
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    views = [a for a in artifacts if a.key == artifact_key(s)]
    assert views, [a.key for a in artifacts]
    assert any("| predictions out, per s | 0.0 |" not in a.data for a in views)
    assert all("raw event -> prediction p50 / p99 / max, ms" in a.data for a in views)
