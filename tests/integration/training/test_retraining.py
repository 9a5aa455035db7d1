"""Retraining on real Iceberg, a real database and real Ray: promotion, refusal, rollback,
determinism, the schedule and the data trigger."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pulsar
import pytest

from mlplatform.connectors.pulsar_io import (
    ensure_partitioned_topic,
    ensure_subscription,
    make_client,
    read_all,
)
from mlplatform.inference.serving.deployment import start_serving, stop_serving
from mlplatform.inference.stream.runner import run_stream_inference
from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelIntegrityError
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import PROJECT_DIR, Settings
from mlplatform.training.retrain import read_snapshot, retrain, split, train_candidates
from tests.helpers import cancel_triggered_runs, module_settings, wait_until

# Emits the retrain-due event for table sys.argv[1] and waits until it is sent (the events
# worker drains on exit).
EMIT_RETRAIN_DUE = """
import sys
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from tasks.preprocess import RETRAIN_DUE_EVENT
emit_event(
    RETRAIN_DUE_EVENT,
    resource={"prefect.resource.id": f"mlplatform.table.{sys.argv[1]}"},
    payload={"rows_added": 1, "rows_since_training": 10**6},
)
EventsWorker.drain_all()
"""
# Rounds of probes (one message per partition, so per consumer) find the moment every consumer
# follows a rollback: a round takes a few tens of milliseconds, and the consumers check the
# registry every model_refresh_s, so at most this many rounds, for at most PROBE_S seconds.
PROBE_ROUNDS = 1000
PROBE_S = 60.0

pytestmark = pytest.mark.integration
PARTITIONS = 2


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    """Tables, topics and a registry of this module's own, with 600 feature rows (appended
    straight to Iceberg: the Flink job that writes them has tests of its own)."""
    s = module_settings(
        isolated, "retrain", model_refresh_s=1.0, features_topic_partitions=PARTITIONS
    )
    append_features(s, 600, seed=31)
    ensure_partitioned_topic(s, s.features_topic, s.features_topic_partitions)
    ensure_subscription(s, s.features_topic, s.stream_subscription)
    return s


@pytest.fixture(scope="module")
def champion(lake: Settings):
    result = retrain(lake)
    assert result.decision == "promote"
    return result


def test_a_worse_candidate_is_not_promoted(lake: Settings, champion) -> None:
    stump = lake.model_copy(
        update={"candidate_grid": [{"family": "decision_tree", "max_depth": 1}]}
    )
    result = retrain(stump)
    assert result.decision == "reject", result.reason
    assert result.best_metrics["macro_f1"] < result.champion_score
    assert model_registry.get_version(lake).version == champion.best_version
    last = model_registry.list_decisions(lake)[-1]
    assert (last.action, last.version) == ("reject", result.best_version)


def test_drift_is_measured_against_the_champions_snapshot(lake: Settings, champion) -> None:
    result = retrain(lake.model_copy(update={"promotion_margin": 1.0}))
    assert [row["feature"] for row in result.drift] == lake.feature_columns
    assert all(row["psi"] < lake.drift_psi_threshold for row in result.drift)  # same data
    model_registry.rollback(lake, champion.best_version)


def test_same_snapshot_and_seed_give_the_same_models(lake: Settings, champion) -> None:
    frame, _ = read_snapshot(lake, champion.snapshot_id)
    train_rows, holdout = split(lake, frame)
    first = train_candidates(lake, train_rows, holdout)
    second = train_candidates(lake, train_rows, holdout)
    x = holdout[lake.feature_columns].to_numpy()
    for a, b in zip(first, second, strict=True):
        assert a.metrics == b.metrics
        assert (a.model.predict_proba(x) == b.model.predict_proba(x)).all()


def test_a_tampered_artifact_is_refused(lake: Settings, champion) -> None:
    version = model_registry.list_versions(lake)[0]
    path = Path(version.artifact_path)
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ModelIntegrityError, match="Refusing to load"):
            model_registry.load_model(model_registry.model_ref(version))
    finally:
        path.write_bytes(original)
    model_registry.load_model(model_registry.model_ref(version))  # restored bytes load again


def _publish_features(
    s: Settings, n: int, seed: int, prefix: str = "rb", topic: str | None = None
) -> list[str]:
    """n feature messages keyed '<prefix>-<seed>-<i>' (to `topic`, default the features
    topic); their keys."""
    rng = np.random.default_rng(seed)
    client = make_client(s)
    keys = [f"{prefix}-{seed}-{i}" for i in range(n)]
    try:
        producer = client.create_producer(topic or s.features_topic)
        for key in keys:
            row = {s.key_column: key, s.label_column: 0}
            row.update({c: float(rng.uniform(1, 6)) for c in s.feature_columns})
            producer.send(json.dumps(row).encode())
    finally:
        client.close()
    return keys


def test_rollback_switches_running_consumers(lake: Settings, champion) -> None:
    """Running consumers follow a rollback: rounds of probes (one message per partition) find
    the moment (no fixed sleep); every message before it is predicted by the rolled-back
    version, every one after by the restored champion."""
    # Two versions: the champion, and a second one promoted by hand.
    previous = champion.best_version
    other = next(v.version for v in model_registry.list_versions(lake) if v.version != previous)
    model_registry.promote(lake, other)
    ensure_partitioned_topic(lake, lake.features_topic, lake.features_topic_partitions)
    before = len(read_all(lake, lake.features_topic))
    partitions = [f"{lake.features_topic}-partition-{p}" for p in range(PARTITIONS)]
    probes_total = PROBE_ROUNDS * PARTITIONS  # unused probes are sent as fillers at the end
    total = before + 40 + probes_total + 40
    client = make_client(lake)
    watch = client.subscribe(
        lake.predictions_topic,
        f"watch-{uuid.uuid4().hex[:6]}",
        initial_position=pulsar.InitialPosition.Earliest,
    )
    versions: dict[str, int] = {}

    def predicted(keys: list[str], timeout_s: float = 90) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while not set(keys) <= set(versions):
            left = int(max(0.0, deadline - time.monotonic()) * 1000)
            assert left, f"{len(set(keys) - set(versions))} of {keys[:2]}... not predicted"
            try:
                message = watch.receive(timeout_millis=min(left, 5000))
            except pulsar.Timeout:
                continue
            watch.acknowledge(message)
            out = json.loads(message.data())
            versions[out[lake.key_column]] = out["model_version"]
        return [versions[key] for key in keys]

    outcome: dict = {}
    consumer = threading.Thread(
        target=lambda: outcome.update(
            result=run_stream_inference(lake, max_messages=total, timeout_s=240)
        )
    )
    consumer.start()
    rounds: list[set[int]] = []
    try:
        assert set(predicted(_publish_features(lake, 40, seed=1))) == {other}
        assert model_registry.rollback(lake) == previous
        deadline = time.monotonic() + PROBE_S
        while (
            len(rounds) < PROBE_ROUNDS
            and time.monotonic() < deadline
            and rounds[-1:] != [{previous}]
        ):
            keys = [
                key
                for p, topic in enumerate(partitions)
                for key in _publish_features(lake, 1, len(rounds), f"probe-p{p}", topic)
            ]
            rounds.append(set(predicted(keys)))
        assert rounds[-1] == {previous}, (
            f"consumers still answer v{other} after {len(rounds)} rounds: {rounds[-5:]}"
        )
        assert set(predicted(_publish_features(lake, 40, seed=2))) == {previous}
        left = probes_total - len(rounds) * PARTITIONS
        assert set(predicted(_publish_features(lake, left, 0, "filler"))) <= {previous}
    finally:  # the run ends by its own timeout at the latest: never left running
        consumer.join(timeout=300)
        client.close()
    assert all(answers <= {other, previous} for answers in rounds), rounds
    assert outcome["result"].published == total


def test_promotion_makes_serve_reload(lake: Settings, champion) -> None:
    current = model_registry.get_version(lake).version
    other = next(v.version for v in model_registry.list_versions(lake) if v.version != current)
    url = start_serving(lake)
    try:
        rows = {"rows": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
        first = httpx.post(f"{url}/predict/bulk", json=rows, timeout=30).json()
        assert first["model_version"] == current
        assert first["predictions"][0]["label"] == "setosa"
        bad = httpx.post(f"{url}/predict/bulk", json={"rows": [[1.0, "x", 2.0, 3.0]]}, timeout=30)
        assert bad.status_code == 422 and "not a number" in bad.json()["detail"]
        model_registry.promote(lake, other)
        wait_until(
            f"serve to answer with v{other}",
            lambda: (
                httpx.post(f"{url}/predict/bulk", json=rows, timeout=30).json()["model_version"]
                == other
            ),
            timeout_s=lake.model_refresh_s + 30,
        )
    finally:
        model_registry.promote(lake, current)
        stop_serving(lake)


def test_retrain_due_event_triggers_the_retrain_deployment(deployments: None) -> None:
    """The retrain deployment's trigger starts a run for the event; the run is cancelled before
    it retrains anything (it would work on the worker's default namespace)."""
    emitted_at = datetime.now(UTC)
    # From a process of its own, as the preprocess flow run would: this process's event
    # queue may still hold other tests' events, which would delay this one.
    emitted = subprocess.run(
        [sys.executable, "-c", EMIT_RETRAIN_DUE, f"it_{uuid.uuid4().hex[:8]}.features"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert emitted.returncode == 0, emitted.stderr[-3000:]
    runs = cancel_triggered_runs("retrain/default", emitted_at)
    assert runs, "no retrain flow run was created by the retrain-due event"
