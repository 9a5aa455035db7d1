"""Benchmark: stream inference and online serving, in one run on the same broker and Ray cluster.

1. Latency at a fixed rate: a publisher paces JSON feature messages (the Flink job's shape, keyed
   by event id) onto a fresh 2-partition features topic; a reader of the predictions topic stamps
   each prediction's arrival. Latency = arrival - send time, matched by event id. Once for our Ray
   consumers (`run_stream_inference`, started and warmed up before publishing), once for a plain
   single-process pulsar-client loop (consume -> parse -> predict_proba -> produce -> ack, in its
   own process, same micro-batching).
2. Sustained throughput: M messages are published first; each consumer drains them on its own
   subscription. messages/s = (n - 1) / (last - first prediction publish timestamp), so start-up
   is not counted (the wall time with start-up is recorded too).
3. Serving: a private Ray Serve app (own name and route prefix, removed at the end), single-row
   latency and 1000-row bulk rows/s over one keep-alive HTTP client, against model.predict_proba
   called in-process.

Every topic, subscription, Iceberg namespace and Serve app is this run's own and is deleted at
the end; the model is the registry's champion (read only). Everything talks to 127.0.0.1.

Usage: python -m benchmarks.streaming [--rate 1000] [--duration 15] [--messages 60000]
       [--requests 500] [--quick]
Prints a table and saves benchmarks/results/streaming-<timestamp>.json and streaming-latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import queue
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pulsar
from sklearn.datasets import load_iris

from mlplatform.connectors.iceberg_tables import load_catalog, table_schemas
from mlplatform.connectors.pulsar_io import (
    ensure_partitioned_topic,
    make_client,
    read_all,
    receive_batch,
)
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.fast_predict import compile_model
from mlplatform.inference.features import InvalidFeatures, parse_message
from mlplatform.inference.serving.deployment import start_serving, stop_serving
from mlplatform.inference.stream.consumer import predict_rows
from mlplatform.inference.stream.runner import StreamResult, run_stream_inference
from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings, get_settings

RESULTS = Path(__file__).parent / "results"
WARM_PREFIX = "warm-"
TARGETS = {"p99_ms_at_rate": 50.0, "sustained_vs_plain": 0.8, "serve_single_p50_ms": 5.0}


# Pure parts (unit-tested).


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks, as numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def match_latencies(sent: dict[str, float], arrived: dict[str, float]) -> tuple[list[float], int]:
    """Milliseconds from send to arrival for every key sent, and how many keys never arrived."""
    latencies = [(arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived]
    return latencies, len(sent) - len(latencies)


def summarize(latencies_ms: list[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99 and max of latencies in milliseconds."""
    if not latencies_ms:
        return {"count": 0}
    return {
        "count": len(latencies_ms),
        "mean_ms": round(sum(latencies_ms) / len(latencies_ms), 2),
        **{f"p{q}_ms": round(percentile(latencies_ms, q), 2) for q in (50, 90, 99)},
        "max_ms": round(max(latencies_ms), 2),
    }


def latency_by_second(sent: dict[str, float], arrived: dict[str, float]) -> list[float]:
    """Median latency (ms) of the messages sent in each second of the run: a steady line is a
    consumer keeping up, a rising one a growing backlog."""
    if not sent:
        return []
    first = min(sent.values())
    buckets: dict[int, list[float]] = {}
    for key, at in sent.items():
        if key in arrived:
            buckets.setdefault(int(at - first), []).append((arrived[key] - at) * 1000)
    return [
        round(percentile(buckets.get(i, []), 50), 1) for i in range(max(buckets, default=-1) + 1)
    ]


def rate_between(count: int, first: float, last: float) -> float:
    """Messages per second for `count` events stamped from `first` to `last` (seconds)."""
    return (count - 1) / (last - first) if count > 1 and last > first else math.nan


def without_nan(value: Any) -> Any:
    """The same structure with NaN floats as None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b and not math.isnan(a) and not math.isnan(b) else math.nan


# Input, publishing and reading.


def feature_rows(s: Settings, prefix: str, count: int, seed: int) -> list[dict[str, Any]]:
    """Noisy Iris rows shaped like the Flink job's output: key, feature columns, label."""
    rng = np.random.default_rng(seed)
    iris = load_iris()
    picks = rng.integers(0, len(iris.target), size=count)
    values = np.clip(iris.data[picks] + rng.normal(0, 0.3, (count, 4)), 0.1, 19.9)
    return [
        {
            s.key_column: f"{prefix}{i}",
            **{c: round(float(v), 3) for c, v in zip(s.feature_columns, row, strict=True)},
            s.label_column: int(label),
        }
        for i, (row, label) in enumerate(zip(values, iris.target[picks], strict=True))
    ]


def publish(
    client: pulsar.Client, topic: str, key: str, rows: list[dict[str, Any]], rate: float | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Send rows keyed by `key`, paced at `rate` per second (None: as fast as possible).

    Returns (event id -> send time, publishing figures). The send time goes with the message
    as its event timestamp too."""
    producer = client.create_producer(
        topic,
        block_if_queue_full=True,
        max_pending_messages=10_000,
        max_pending_messages_across_partitions=20_000,
    )
    errors: list[str] = []

    def done(result: pulsar.Result, _: object) -> None:
        if result != pulsar.Result.Ok:
            errors.append(str(result))

    sent: dict[str, float] = {}
    lag = 0.0
    started = time.perf_counter()
    for i, row in enumerate(rows):
        if rate:
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0.0005:
                time.sleep(ahead)
            lag = max(lag, -ahead)
        sent[row[key]] = now = time.time()
        producer.send_async(
            json.dumps(row).encode(), done, partition_key=row[key], event_timestamp=int(now * 1000)
        )
    producer.flush()
    seconds = time.perf_counter() - started
    producer.close()
    if errors:
        raise RuntimeError(f"publishing to {topic} failed {len(errors)} times: {errors[:3]}")
    return sent, {
        "sent": len(rows),
        "seconds": round(seconds, 3),
        "achieved_rate": round(len(rows) / seconds, 1),
        "max_behind_schedule_ms": round(lag * 1000, 2),
    }


class Arrivals(threading.Thread):
    """Reads a predictions topic from the start; stamps each key's first arrival (time.time())
    and its prediction's publish timestamp."""

    def __init__(self, client: pulsar.Client, topic: str, key: str) -> None:
        super().__init__(daemon=True)
        self.consumer = client.subscribe(
            topic,
            f"bench-watch-{uuid.uuid4().hex[:6]}",
            initial_position=pulsar.InitialPosition.Earliest,
        )
        self.key = key
        self.arrived: dict[str, float] = {}
        self.published: dict[str, float] = {}
        self.duplicates = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                message = self.consumer.receive(timeout_millis=100)
            except pulsar.Timeout:
                continue
            now = time.time()
            key = json.loads(message.data())[self.key]
            if key in self.arrived:
                self.duplicates += 1
                continue
            self.arrived[key] = now
            self.published[key] = message.publish_timestamp() / 1000

    def wait_for(self, keys: Iterable[str], timeout_s: float) -> bool:
        wanted = set(keys)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if wanted.issubset(self.arrived):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)
        self.consumer.close()


def drained_rate(s: Settings, topic: str, expected: int) -> dict[str, Any]:
    """Messages/s of the predictions on `topic`, from their publish timestamps."""
    messages = read_all(s, topic)
    stamps = [m.publish_timestamp() / 1000 for m in messages]
    keys = {json.loads(m.data())[s.key_column] for m in messages}
    return {
        "predictions": len(messages),
        "unique_keys": len(keys),
        "complete": len(keys) == expected,
        "msgs_per_s": round(rate_between(len(stamps), min(stamps), max(stamps)), 1)
        if stamps
        else math.nan,
        "span_s": round(max(stamps) - min(stamps), 3) if stamps else math.nan,
    }


# The plain single-process loop: the peer our Ray consumers are compared with.


def plain_loop(
    s: Settings,
    ref: ModelRef,
    subscription: str,
    predictions_topic: str,
    count: int,
    timeout_s: float,
    ready: Event,
    results: multiprocessing.Queue,
) -> None:
    """consume -> parse -> predict_proba on the micro-batch -> produce -> flush -> ack.

    The same micro-batches (stream_batch_max messages or stream_batch_wait_ms) and the same
    parsing and prediction code as the Ray consumers; no Iceberg, no de-duplication."""
    model = compile_model(model_registry.load_model(ref))  # as the Ray consumers predict
    client = make_client(s)
    consumer = client.subscribe(
        s.features_topic,
        subscription,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=s.stream_receiver_queue,
    )
    producer = client.create_producer(
        predictions_topic,
        batching_enabled=True,
        batching_max_publish_delay_ms=1,
        block_if_queue_full=True,
    )
    errors: list[str] = []

    def sent(result: pulsar.Result, _: object) -> None:
        if result != pulsar.Result.Ok:
            errors.append(str(result))

    ready.set()
    done = rejected = 0
    started = time.monotonic()
    try:
        while done < count and time.monotonic() - started < timeout_s:
            messages = receive_batch(
                consumer, s.stream_batch_max, s.stream_batch_wait_ms, s.stream_batch_linger_ms
            )
            keys, features = [], []
            for message in messages:
                try:
                    key, values = parse_message(message.data(), s.key_column, ref.feature_order)
                    keys.append(key)
                    features.append(values)
                except InvalidFeatures:
                    rejected += 1
            if keys:
                for row in predict_rows(model, ref, s.key_column, keys, features):
                    producer.send_async(
                        json.dumps(row).encode(), sent, partition_key=str(row[s.key_column])
                    )
                producer.flush()
            for message in messages:
                consumer.acknowledge(message)
            done += len(keys)
    finally:
        results.put(
            {
                "published": done,
                "rejected": rejected,
                "errors": len(errors),
                "seconds": round(time.monotonic() - started, 3),
            }
        )
        producer.close()
        consumer.close()
        client.close()


class PlainProcess:
    """The plain loop in a process of its own (as the Ray actors are), started and ready."""

    def __init__(
        self,
        s: Settings,
        ref: ModelRef,
        subscription: str,
        predictions_topic: str,
        count: int,
        timeout_s: float,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.results = context.Event(), context.Queue()
        self.process = context.Process(
            target=plain_loop,
            args=(
                s,
                ref,
                subscription,
                predictions_topic,
                count,
                timeout_s,
                self.ready,
                self.results,
            ),
            daemon=True,
        )
        self.timeout_s = timeout_s
        self.process.start()
        if not self.ready.wait(120):
            self.process.kill()
            raise RuntimeError("the plain consumer process did not start within 120 s")

    def result(self) -> dict[str, Any]:
        try:
            outcome = self.results.get(timeout=self.timeout_s + 30)
        except queue.Empty:
            outcome = {"error": "no result in time"}
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        return outcome


# The model: the registry's champion, or a small one in a registry of this run's own.


def champion(base: Settings, tag: str) -> tuple[Settings, ModelRef, str]:
    """(settings whose registry holds the model, its ref, where it came from).

    Without a champion, a small random forest is trained on noisy Iris and registered and
    promoted in a private SQLite registry: the shared registry's champion is never changed."""
    try:
        return base, model_registry.model_ref(model_registry.get_version(base)), "champion"
    except LookupError:
        pass
    from sklearn.ensemble import RandomForestClassifier

    s = base.model_copy(
        update={"database_url": f"sqlite:///{base.state_dir / f'bench-{tag}-registry.db'}"}
    )
    rows = feature_rows(s, "train-", 2000, seed=1)
    x = np.asarray([[r[c] for c in s.feature_columns] for r in rows])
    y = np.asarray([r[s.label_column] for r in rows])
    model = RandomForestClassifier(n_estimators=50, max_depth=5, random_state=s.seed).fit(x, y)
    row = model_registry.register(
        s,
        model,
        family="random_forest",
        params={"n_estimators": 50, "max_depth": 5},
        metrics={"accuracy": float(model.score(x, y))},
        training_table="benchmark",
        training_snapshot_id=0,
        training_rows=len(rows),
        feature_order=list(s.feature_columns),
        label_names=list(s.label_names),
    )
    model_registry.promote(s, row.version, "benchmark model: the registry had no champion")
    return s, model_registry.model_ref(row), f"trained here (private registry {s.database_url})"


def in_process(
    model: Any, vectors: list[list[float]], bulk: list[list[float]], bulk_requests: int
) -> dict[str, Any]:
    """One-row predict_proba latencies (ms) and bulk rows/s of `model` in this process."""
    single = []
    for vector in vectors:
        started = time.perf_counter()
        model.predict_proba(np.asarray([vector], dtype=np.float64))
        single.append((time.perf_counter() - started) * 1000)
    matrix = np.asarray(bulk, dtype=np.float64)
    started = time.perf_counter()
    for _ in range(bulk_requests):
        model.predict_proba(matrix)
    seconds = time.perf_counter() - started
    return {
        "single": summarize(single),
        "bulk_rows_per_s": round(len(bulk) * bulk_requests / seconds, 1),
    }


def start_noop(s: Settings, cpus: float) -> str:
    """A Serve app that answers every request with a constant, next to the model's app (same
    proxy, same replica options); its address."""
    from ray import serve

    @serve.deployment(
        ray_actor_options={"num_cpus": cpus}, logging_config={"enable_access_log": False}
    )
    class NoOp:  # defined here so that Ray pickles it by value, not by module name
        async def __call__(self, _: object) -> str:
            return "ok"

    name, prefix = f"{s.serve_app_name}-noop", f"{s.serve_route_prefix}-noop"
    serve.run(NoOp.bind(), name=name, route_prefix=prefix)
    return f"http://127.0.0.1:{s.serve_port}{prefix}"


def serve_delete(name: str) -> None:
    from ray import serve

    serve.delete(name)


# Scenarios.


class Run:
    """This run's own names, and everything it created (deleted by `clean_up`)."""

    def __init__(self, base: Settings, ref: ModelRef, args: argparse.Namespace, tag: str) -> None:
        self.base, self.ref, self.args, self.tag = base, ref, args, tag
        self.round = 0  # topics and subscriptions are each round's own
        self.namespace = f"bench_{self.tag}"
        self.topics: list[str] = []
        self.threads: list[threading.Thread] = []
        self.client = make_client(base)

    def topic(self, name: str) -> str:
        topic = f"persistent://public/default/bench-{self.tag}-r{self.round}-{name}"
        self.topics.append(topic)
        return topic

    def stream_settings(self, features_topic: str, name: str) -> Settings:
        return self.base.model_copy(
            update={
                "namespace": self.namespace,
                "features_topic": features_topic,
                "predictions_topic": self.topic(f"{name}-predictions"),
                "dead_letter_topic": self.topic(f"{name}-dlq"),
                "stream_subscription": f"bench-{self.tag}-r{self.round}-{name}",
                "stream_actor_cpus": self.args.actor_cpus,
            }
        )

    def latency(self, name: str, start: Callable[[Settings, int], Callable[[], Any]]) -> dict:
        """Start a consumer, warm it up, publish at the fixed rate, match arrivals."""
        args, key = self.args, self.base.key_column
        features = self.topic(f"{name}-features")
        ensure_partitioned_topic(self.base, features, 2)
        s = self.stream_settings(features, name)
        warm = feature_rows(s, f"{WARM_PREFIX}{name}-", args.warmup, seed=3)
        rows = feature_rows(s, f"{name}-", int(args.rate * args.duration), seed=4)
        watch = Arrivals(self.client, s.predictions_topic, key)
        watch.start()
        load = os.getloadavg()[0]
        finish = start(s, len(warm) + len(rows))
        try:
            publish(self.client, features, key, warm, rate=200)
            if not watch.wait_for((r[key] for r in warm), 180):
                raise RuntimeError(f"{name}: the warm-up predictions did not arrive in 180 s")
            sent, publishing = publish(self.client, features, key, rows, args.rate)
            watch.wait_for(sent, args.drain_s)
        finally:
            outcome = finish()
            watch.stop()
        arrival, missing = match_latencies(sent, watch.arrived)
        to_send, _ = match_latencies(sent, watch.published)
        return {
            "consumer": name,
            "rate": args.rate,
            "duration_s": args.duration,
            "publishing": publishing,
            "missing": missing,
            "duplicates": watch.duplicates,
            "latency_to_arrival": summarize(arrival),
            "latency_to_prediction_send": summarize(to_send),
            "p50_ms_by_second": latency_by_second(sent, watch.arrived),
            "loadavg_1m_at_start": load,
            "consumer_result": outcome,
        }

    def start_ray(self, s: Settings, count: int) -> Callable[[], Any]:
        outcome: dict[str, Any] = {}

        def consume() -> None:
            try:
                result = run_stream_inference(s, count, self.args.ray_timeout_s, self.ref.version)
                outcome["result"] = stream_result(result)
            except Exception as error:  # noqa: BLE001 - reported in the results
                outcome["result"] = {"error": repr(error)}

        runner = threading.Thread(target=consume, daemon=True)
        runner.start()
        self.threads.append(runner)

        def finish() -> Any:
            runner.join(timeout=self.args.ray_timeout_s + 60)
            return outcome.get("result", {"error": "still running"})

        return finish

    def start_plain(self, s: Settings, count: int) -> Callable[[], Any]:
        plain = PlainProcess(
            s,
            self.ref,
            s.stream_subscription,
            s.predictions_topic,
            count,
            self.args.ray_timeout_s,
        )
        return plain.result

    def throughput(self) -> dict[str, Any]:
        """Publish M messages, then let each consumer drain them on its own subscription."""
        key = self.base.key_column
        features = self.topic("drain-features")
        ensure_partitioned_topic(self.base, features, 2)
        rows = feature_rows(self.base, "drain-", self.args.messages, seed=5)
        _, publishing = publish(self.client, features, key, rows, rate=None)
        out: dict[str, Any] = {"messages": len(rows), "publishing": publishing}
        runs: list[tuple[str, Callable[[Settings], Any]]] = [
            ("ray", lambda s: self.start_ray(s, len(rows))()),
            ("plain", lambda s: self.start_plain(s, len(rows))()),
        ]
        for name, drain in runs:
            s = self.stream_settings(features, f"drain-{name}")
            load = os.getloadavg()[0]
            started = time.monotonic()
            result = drain(s)
            wall = time.monotonic() - started
            out[name] = {
                **drained_rate(s, s.predictions_topic, len(rows)),
                "wall_s_with_startup": round(wall, 2),
                "loadavg_1m_at_start": load,
                "consumer_result": result,
            }
        return out

    def serving(self) -> dict[str, Any]:
        """Single and bulk requests to a private Serve app, against in-process predict_proba
        (scikit-learn's own, and the compiled trees the app uses), and a no-op Serve endpoint
        on the same proxy: the floor of any Serve request on this machine."""
        args = self.args
        s = self.base.model_copy(
            update={
                "serve_app_name": f"bench-{self.tag}",
                "serve_route_prefix": f"/bench-{self.tag}",
                "serve_min_replicas": 1,
                "serve_max_replicas": 1,
                "serve_replica_cpus": args.replica_cpus,
            }
        )
        rows = feature_rows(s, "serve-", max(args.requests, args.bulk_rows), seed=6)
        vectors = [[r[c] for c in self.ref.feature_order] for r in rows]
        bulk = vectors[: args.bulk_rows]
        load = os.getloadavg()[0]
        deploy_started = time.monotonic()
        address = start_serving(s, self.ref.version)
        deploy_s = time.monotonic() - deploy_started
        floor_address = start_noop(s, args.replica_cpus)
        single: list[float] = []
        floor: list[float] = []
        bulk_s: list[float] = []
        try:
            with httpx.Client(timeout=60) as http:
                for vector in vectors[:20]:  # warm-up: connection, replica, first predictions
                    http.post(f"{address}/predict", json={"features": vector}).raise_for_status()
                    http.post(floor_address, json={"features": vector}).raise_for_status()
                http.post(f"{address}/predict/bulk", json={"rows": bulk}).raise_for_status()
                for vector in vectors[: args.requests]:  # interleaved: the same load on both
                    started = time.perf_counter()
                    http.post(f"{address}/predict", json={"features": vector}).raise_for_status()
                    single.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    http.post(floor_address, json={"features": vector}).raise_for_status()
                    floor.append((time.perf_counter() - started) * 1000)
                for _ in range(args.bulk_requests):
                    started = time.perf_counter()
                    http.post(f"{address}/predict/bulk", json={"rows": bulk}).raise_for_status()
                    bulk_s.append(time.perf_counter() - started)
        finally:
            stop_serving(s)
            serve_delete(f"{s.serve_app_name}-noop")
        model = model_registry.load_model(self.ref)
        local = in_process(model, vectors[: args.requests], bulk, args.bulk_requests)
        compiled = in_process(
            compile_model(model), vectors[: args.requests], bulk, args.bulk_requests
        )
        serve_rows_s = len(bulk) * len(bulk_s) / sum(bulk_s)
        return {
            "app": s.serve_app_name,
            "route_prefix": s.serve_route_prefix,
            "deploy_s": round(deploy_s, 2),
            "loadavg_1m_at_start": load,
            "serve_single": summarize(single),
            "serve_noop_floor": summarize(floor),
            "in_process_single": local["single"],
            "in_process_single_compiled": compiled["single"],
            "bulk_rows_per_request": len(bulk),
            "bulk_requests": args.bulk_requests,
            "serve_bulk_rows_per_s": round(serve_rows_s, 1),
            "serve_bulk_request": summarize([t * 1000 for t in bulk_s]),
            "in_process_bulk_rows_per_s": local["bulk_rows_per_s"],
            "in_process_bulk_rows_per_s_compiled": compiled["bulk_rows_per_s"],
        }

    def clean_up(self) -> list[str]:
        """Delete this run's topics (with their subscriptions) and Iceberg namespace."""
        problems = []
        with contextlib.suppress(Exception):
            self.client.close()
        for topic in self.topics:
            path = topic.replace("://", "/", 1)
            for suffix in ("/partitions", ""):
                url = f"{self.base.pulsar_admin_url}/admin/v2/{path}{suffix}?force=true"
                try:
                    httpx.delete(url, timeout=30)
                except httpx.HTTPError as error:
                    problems.append(f"{topic}: {error}")
        try:
            catalog = load_catalog(self.base)
            if (self.namespace,) in catalog.list_namespaces():
                for table in table_schemas(self.base):
                    with contextlib.suppress(Exception):
                        catalog.drop_table(f"{self.namespace}.{table}")
                catalog.drop_namespace(self.namespace)
        except Exception as error:  # noqa: BLE001 - reported, never fatal at the end
            problems.append(f"iceberg namespace {self.namespace}: {error}")
        if self.base.warehouse is None:  # the embedded file warehouse: remove our files too
            shutil.rmtree(self.base.local_dir / "warehouse" / self.namespace, ignore_errors=True)
        return problems


def stream_result(result: StreamResult) -> dict[str, Any]:
    return {
        "consumed": result.consumed,
        "published": result.published,
        "failed": result.failed,
        "model_version": result.model_version,
        "seconds": round(result.seconds, 2),
        "actor_restarts": result.actor_restarts,
    }


# Report.


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float | int) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:,.{digits}f}"
    return "-"


def print_table(summary: dict[str, Any]) -> None:
    lat, tp, sv = summary["latency"], summary["throughput"], summary["serving"]
    print(f"\n=== streaming benchmark ({summary['started_at']}) ===")
    print(
        f"machine: {summary['machine']['cpus']} CPUs, load average 1m "
        f"{summary['machine']['loadavg_start'][0]:.2f} at start, "
        f"{summary['machine']['loadavg_end'][0]:.2f} at end"
    )
    if lat:
        rate, duration = summary["args"]["rate"], summary["args"]["duration"]
        print(
            f"\nend-to-end latency at {rate:g} msg/s for {duration:g} s, last round "
            "(publish -> prediction arrives; ms)"
        )
        print(
            f"  {'consumer':<18}{'sent/s':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"
            f"{'missing':>9}  p50/p99 to prediction send"
        )
        for name, row in lat.items():
            a, p = row.get("latency_to_arrival", {}), row.get("latency_to_prediction_send", {})
            print(
                f"  {name:<18}{_fmt(row.get('publishing', {}).get('achieved_rate'), 0):>9}"
                f"{_fmt(a.get('p50_ms')):>9}{_fmt(a.get('p90_ms')):>9}{_fmt(a.get('p99_ms')):>9}"
                f"{_fmt(a.get('max_ms')):>9}{_fmt(row.get('missing'), 0):>9}  "
                f"{_fmt(p.get('p50_ms'))} / {_fmt(p.get('p99_ms'))}"
            )
    if tp:
        print(f"\nsustained drain of {tp['messages']:,} pre-published messages, last round")
        print(f"  {'consumer':<18}{'msg/s':>10}{'complete':>10}{'wall s (with start-up)':>25}")
        for name in ("ray", "plain"):
            row = tp.get(name, {})
            print(
                f"  {name:<18}{_fmt(row.get('msgs_per_s'), 0):>10}"
                f"{str(row.get('complete', '-')):>10}{_fmt(row.get('wall_s_with_startup')):>25}"
            )
    if summary["rounds"]:
        columns = {
            "ray_p99_ms": "ray p99",
            "plain_p99_ms": "plain p99",
            "ray_msgs_per_s": "ray msg/s",
            "plain_msgs_per_s": "plain msg/s",
            "ray_over_plain_msgs_per_s": "ray/plain",
        }
        print("\nevery round (Ray, then plain), and the medians the ratios use")
        print("  " + f"{'round':<10}" + "".join(f"{name:>14}" for name in columns.values()))
        for label, row in [*enumerate(summary["rounds"], 1), ("median", summary["medians"])]:
            print(f"  {label!s:<10}" + "".join(f"{_fmt(row[k], 2):>14}" for k in columns))
    if sv:
        s1, l1 = sv["serve_single"], sv["in_process_single"]
        f1, c1 = sv.get("serve_noop_floor", {}), sv.get("in_process_single_compiled", {})
        print("\nserving (ms; rows/s)")
        print(
            f"  single request   Serve p50 {_fmt(s1.get('p50_ms'), 2)}  p99 "
            f"{_fmt(s1.get('p99_ms'), 2)}   no-op Serve endpoint p50 "
            f"{_fmt(f1.get('p50_ms'), 2)}  p99 {_fmt(f1.get('p99_ms'), 2)}"
        )
        print(
            f"  in-process       predict_proba p50 {_fmt(l1.get('p50_ms'), 2)}  p99 "
            f"{_fmt(l1.get('p99_ms'), 2)}   compiled p50 {_fmt(c1.get('p50_ms'), 3)}  p99 "
            f"{_fmt(c1.get('p99_ms'), 3)}"
        )
        serve_rows, local_rows = sv["serve_bulk_rows_per_s"], sv["in_process_bulk_rows_per_s"]
        compiled_rows = sv.get("in_process_bulk_rows_per_s_compiled")
        print(
            f"  bulk {sv['bulk_rows_per_request']} rows   Serve {_fmt(serve_rows, 0)} rows/s   "
            f"in-process predict_proba {_fmt(local_rows, 0)} rows/s, compiled "
            f"{_fmt(compiled_rows, 0)} rows/s"
        )
    print("\nratios and targets")
    for name, value in summary["ratios"].items():
        print(f"  {name:<40}{_fmt(value, 3):>10}")
    for name, value in summary["targets"].items():
        print(f"  {name:<40}{value!s:>10}")


def round_figures(latency: dict[str, Any], throughput: dict[str, Any]) -> dict[str, float]:
    """One round's figures for Ray and the plain loop, and their ratios."""
    nan = math.nan

    def p(name: str, q: str) -> float:
        return latency.get(name, {}).get("latency_to_arrival", {}).get(q, nan)

    def rate(name: str) -> float:
        return throughput.get(name, {}).get("msgs_per_s", nan)

    return {
        "ray_p50_ms": p("ray", "p50_ms"),
        "ray_p99_ms": p("ray", "p99_ms"),
        "plain_p50_ms": p("plain", "p50_ms"),
        "plain_p99_ms": p("plain", "p99_ms"),
        "ray_msgs_per_s": rate("ray"),
        "plain_msgs_per_s": rate("plain"),
        "ray_over_plain_msgs_per_s": ratio(rate("ray"), rate("plain")),
        "ray_over_plain_p99_latency": ratio(p("ray", "p99_ms"), p("plain", "p99_ms")),
    }


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds (NaN where no round has it)."""
    keys = rounds[0].keys() if rounds else []
    values = {k: [r[k] for r in rounds if not math.isnan(r[k])] for k in keys}
    return {k: float(np.median(v)) if v else math.nan for k, v in values.items()}


def derived(summary: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Ratios (the stream ones: medians over the rounds) and whether each target is met."""
    sv, stream = summary["serving"], summary["medians"]
    nan = math.nan
    serve_p50 = sv.get("serve_single", {}).get("p50_ms", nan) if sv else nan
    ratios = {
        k: stream.get(k, nan)
        for k in (
            "ray_over_plain_msgs_per_s",
            "ray_over_plain_p99_latency",
        )
    }
    ratios["serve_over_in_process_single_p50"] = ratio(
        serve_p50, sv.get("in_process_single", {}).get("p50_ms", nan) if sv else nan
    )
    ratios["serve_over_in_process_bulk_rows_per_s"] = ratio(
        sv.get("serve_bulk_rows_per_s", nan) if sv else nan,
        sv.get("in_process_bulk_rows_per_s", nan) if sv else nan,
    )
    ray_p99 = stream.get("ray_p99_ms", nan)
    targets = {
        f"ray p99 <= {TARGETS['p99_ms_at_rate']:g} ms at {summary['args']['rate']:g} msg/s": (
            ray_p99 <= TARGETS["p99_ms_at_rate"]
        ),
        f"ray sustained >= {TARGETS['sustained_vs_plain']:.0%} of plain": (
            ratios["ray_over_plain_msgs_per_s"] >= TARGETS["sustained_vs_plain"]
        ),
        f"serve single p50 <= {TARGETS['serve_single_p50_ms']:g} ms": (
            serve_p50 <= TARGETS["serve_single_p50_ms"]
        ),
    }
    return ratios, targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="msg/s for the latency runs")
    parser.add_argument("--duration", type=float, default=15, help="seconds of paced publishing")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up messages per consumer")
    parser.add_argument("--messages", type=int, default=60_000, help="messages for the drain")
    parser.add_argument("--requests", type=int, default=500, help="single Serve requests")
    parser.add_argument("--bulk-rows", type=int, default=1000)
    parser.add_argument("--bulk-requests", type=int, default=30)
    parser.add_argument("--drain-s", type=float, default=30, help="wait for late predictions")
    parser.add_argument("--ray-timeout-s", type=float, default=150, help="bound of each consumer")
    parser.add_argument(
        "--skip", choices=("latency", "throughput", "serving"), nargs="*", default=[]
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting for this run, e.g. stream_commit_interval_s=30 (repeatable)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="latency and drain runs, Ray and plain alternating; ratios are the rounds' medians",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.messages = min(args.duration, 4), min(args.messages, 3000)
        args.requests, args.bulk_requests = min(args.requests, 100), min(args.bulk_requests, 5)
        args.drain_s, args.ray_timeout_s = min(args.drain_s, 15), min(args.ray_timeout_s, 90)
        args.rounds = 1
    return args


def ray_cpus_free(s: Settings) -> float:
    import ray  # after mlplatform: its import keeps Ray on loopback

    connect(s)
    return float(ray.available_resources().get("CPU", 0.0))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loadavg_start = os.getloadavg()
    started_at = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    overrides = dict(item.split("=", 1) for item in args.overrides)
    settings = get_settings()
    if overrides:  # validated (and converted) like environment variables
        settings = Settings.model_validate({**settings.model_dump(), **overrides})
    base, ref, model_source = champion(settings, tag)
    # Ray's CPU bookkeeping only places actors (it does not cap them); on a shared cluster with
    # too few CPUs left, fractional requests would leave our actors pending, so ask for none.
    free = ray_cpus_free(base)
    need = base.stream_actors * base.stream_actor_cpus + base.serve_replica_cpus
    args.actor_cpus = base.stream_actor_cpus if free >= need else 0.0
    args.replica_cpus = base.serve_replica_cpus if free >= need else 0.0
    run = Run(base, ref, args, tag)
    print(
        f"run {run.tag}: champion v{ref.version}, {free:g} Ray CPUs free, "
        f"load average {loadavg_start[0]:.2f}",
        flush=True,
    )
    latency: dict[str, Any] = {}
    throughput: dict[str, Any] = {}
    serving: dict[str, Any] = {}
    rounds: list[dict[str, float]] = []
    try:
        for i in range(args.rounds if {"latency", "throughput"} - set(args.skip) else 0):
            run.round = i
            latency, throughput = {}, {}
            if "latency" not in args.skip:
                latency["ray"] = run.latency("ray", run.start_ray)
                print(f"latency ray: {latency['ray']['latency_to_arrival']}", flush=True)
                latency["plain"] = run.latency("plain", run.start_plain)
                print(f"latency plain: {latency['plain']['latency_to_arrival']}", flush=True)
            if "throughput" not in args.skip:
                throughput = run.throughput()
                print(
                    "drain: "
                    + ", ".join(
                        f"{k} {throughput[k]['msgs_per_s']} msg/s" for k in ("ray", "plain")
                    ),
                    flush=True,
                )
            rounds.append(round_figures(latency, throughput))
        if "serving" not in args.skip:
            serving = run.serving()
            print(f"serve single: {serving['serve_single']}", flush=True)
    finally:
        problems = run.clean_up()
    summary: dict[str, Any] = {
        "benchmark": "stream inference and serving",
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "machine": {
            "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg(),
            "ray_cpus_free_at_start": free,
            "note": "shared machine: the broker, Ray, Prefect and other developers' jobs run on "
            "the same cores during the benchmark",
        },
        "args": {k: v for k, v in vars(args).items()},
        "settings": {
            "model_version": ref.version,
            "model_source": model_source,
            "model_artifact": Path(ref.artifact_path).name,
            "feature_order": list(ref.feature_order),
            "features_partitions": 2,
            **{
                k: getattr(base, k)
                for k in (
                    "stream_actors",
                    "stream_subscription_type",
                    "stream_batch_max",
                    "stream_batch_wait_ms",
                    "stream_batch_linger_ms",
                    "stream_commit_interval_s",
                    "pulsar_service_url",
                    "ray_address",
                    "serve_port",
                )
            },
            "overrides": overrides,
            "stream_actor_cpus_used": args.actor_cpus,
            "serve_replica_cpus_used": args.replica_cpus,
        },
        # The last round in full; every round's figures, and their medians.
        "latency": latency,
        "throughput": throughput,
        "rounds": rounds,
        "medians": medians(rounds),
        "serving": serving,
        "cleanup_problems": problems,
    }
    summary["ratios"], summary["targets"] = derived(summary)
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(without_nan(summary), indent=2, default=str) + "\n"
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"streaming-{stamp}.json").write_text(text)
    (RESULTS / "streaming-latest.json").write_text(text)
    print_table(summary)
    print(f"\nsaved {RESULTS / f'streaming-{stamp}.json'}", flush=True)
    if any(thread.is_alive() for thread in run.threads):
        # A consumer that outlived its bound: leave now, Ray removes a gone driver's actors.
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
