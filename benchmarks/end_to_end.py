"""Benchmark: the real-time path end to end, from a raw event's publish on the raw-events topic
to its prediction on the predictions topic, in one run.

Usage: python -m benchmarks.end_to_end [--rate 1000] [--seconds 20] [--burst 20000]
           [--deliveries at-least-once exactly-once] [--no-kills]

Each variant gets a namespace, topics and subscription of its own, the same events and the
same model (the champion, else a small forest in a private registry, as benchmarks.streaming):
- `flink-<delivery>`: the Flink stream jobs (MLP_FLINK_STREAM_DELIVERY=<delivery>) on the session
  cluster (started when not up): the real-time job -> features topic -> the stream actors on
  Ray (one, at the defaults) -> predictions topic and Iceberg; the lake job copies the
  features topic into the Iceberg tables beside it on the same cores (its rate on the burst is
  reported, and each latency phase starts once it has read every event sent);
- `plain`: one process that reads the raw-events topic, checks each event with the consumers'
  rules (the dataset spec's columns and ranges), drops an event id it has seen, predicts the
  micro-batch and publishes: the limit without Flink and Ray (no Iceberg, no crash safety).
Steps per variant: warm up (events until one comes out the other end), the sustained rate
(--burst events as fast as the producer sends; events/s from the first send to the last
prediction; this also warms the Flink job's JIT), latency at --rate for --seconds, and at 50%,
80% and 100% of the sustained rate (for --seconds, at most --burst events). Then, for the first
Flink variant unless --no-kills, recovery: kill -9 of the consumer actor, then of the
TaskManager running the real-time job (`start_cluster` starts a new one, as a supervisor
would, once the jobs have recovered), each mid-stream at --rate
or 80% of the sustained rate, whichever is lower (a backlog would hide the recovery); the time
from the kill to the first prediction of an event sent after it. Every Flink variant ends with
an exactness check from outside: each event's prediction once on the topic and once in Iceberg.

Prints a table and the JSON summary; saves benchmarks/results/end_to_end.json and a plot of the
median latency per second through the kills (end_to_end.png).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import queue
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import pulsar

from benchmarks.streaming import (
    Arrivals,
    champion,
    latency_by_second,
    match_latencies,
    summarize,
    without_nan,
)
from infra.flink_cluster import ClusterDirs, healthy, job_taskmanager, start_cluster, stop_cluster
from infra.processes import alive
from mlplatform.connectors.iceberg_tables import load_catalog, load_table
from mlplatform.connectors.pulsar_io import (
    admin_headers,
    broker_stats,
    make_client,
    read_all,
    receive_batch,
    topic_path,
)
from mlplatform.inference.fast_predict import compile_model
from mlplatform.inference.features import InvalidFeatures, parse_message
from mlplatform.inference.stream.consumer import predict_rows
from mlplatform.inference.stream.partitions import reading_pids
from mlplatform.inference.stream.runner import run_stream_inference
from mlplatform.preprocess.stream import (
    LAKE,
    active_job,
    job_name,
    start_stream,
    stop_stream,
    stream_settings,
)
from mlplatform.registry import model_registry
from mlplatform.registry.model_ref import ModelRef
from mlplatform.sample_data.demo_rows import demo_events
from mlplatform.settings import Settings, get_settings

RESULTS = Path(__file__).parent / "results"
TARGETS = {
    "p50_ms_at_rate": 100.0,
    "p99_ms_at_rate": 1000.0,
    "consumer_recovery_s": 2.0,
    "taskmanager_recovery_s": 15.0,
}
KILL_AFTER_S = 5.0  # into a recovery stream
SHARES = (0.5, 0.8, 1.0)  # of the sustained rate, for the latency at each


def variant_settings(base: Settings, tag: str, name: str, delivery: str) -> Settings:
    """Topics, subscription and namespace of this variant's own."""
    prefix = f"persistent://public/default/e2e-{tag}-{name}"
    return stream_settings(
        base.model_copy(
            update={
                "namespace": f"bench_e2e_{tag}_{name.replace('-', '_')}",
                "raw_events_topic": f"{prefix}-raw",
                "features_topic": f"{prefix}-features",
                "quarantine_topic": f"{prefix}-quarantine",
                "predictions_topic": f"{prefix}-predictions",
                "dead_letter_topic": f"{prefix}-dlq",
                "stream_subscription": f"e2e-{tag}-{name}",
                "flink_stream_delivery": delivery,
            }
        )
    )


def publish_raw(
    client: pulsar.Client, topic: str, events: list[dict[str, Any]], key: str, rate: float | None
) -> dict[str, float]:
    """Send raw events unbatched (the stream job's rule), paced at `rate` per second (None: as
    fast as the producer goes); event id -> send time (time.time())."""
    producer = client.create_producer(
        topic, batching_enabled=False, block_if_queue_full=True, max_pending_messages=10_000
    )
    errors: list[str] = []

    def done(result: pulsar.Result, _: object) -> None:
        if result != pulsar.Result.Ok:
            errors.append(str(result))

    sent: dict[str, float] = {}
    started = time.perf_counter()
    for i, event in enumerate(events):
        if rate:
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0.0005:
                time.sleep(ahead)
        sent[event[key]] = time.time()
        producer.send_async(json.dumps(event).encode(), done)
    producer.flush()
    producer.close()
    if errors:
        raise RuntimeError(f"publishing to {topic} failed {len(errors)} times: {errors[:3]}")
    return sent


def plain_raw_loop(
    s: Settings, ref: ModelRef, count: int, timeout_s: float, ready: Event, results: Any
) -> None:
    """raw event -> checks (columns, numbers, ranges) -> first of its id -> predict the
    micro-batch -> publish -> ack; the same micro-batches and prediction code as the actors."""
    model = compile_model(model_registry.load_model(ref))
    client = make_client(s)
    consumer = client.subscribe(
        s.raw_events_topic,
        s.stream_subscription,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=s.stream_receiver_queue,
    )
    producer = client.create_producer(
        s.predictions_topic, batching_enabled=True, batching_max_publish_delay_ms=1
    )
    ranges, seen = s.dataset_spec.ranges, set()
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
                    key, values = parse_message(
                        message.data(), s.key_column, ref.feature_order, ranges
                    )
                except InvalidFeatures:
                    rejected += 1
                    continue
                if key not in seen:
                    seen.add(key)
                    keys.append(key)
                    features.append(values)
            if keys:
                for row in predict_rows(model, ref, s.key_column, keys, features):
                    producer.send_async(json.dumps(row).encode(), None)
                producer.flush()
            for message in messages:
                consumer.acknowledge(message)
            done += len(keys)
    finally:
        results.put({"published": done, "rejected": rejected})
        producer.close()
        consumer.close()
        client.close()


@dataclass
class Variant:
    """One path under test, started: how to stop it, and what it has done."""

    name: str
    s: Settings
    stop: Callable[[], dict[str, Any]]
    watch: Arrivals
    events: int = 0
    phases: dict[str, Any] = field(default_factory=dict)


def start_flink_variant(
    base: Settings, ref: ModelRef, tag: str, delivery: str, planned: int, timeout_s: float
) -> Variant:
    s = variant_settings(base, tag, f"flink-{delivery}", delivery)
    start_stream(s, run_id=f"bench-{tag}")
    outcome: dict[str, Any] = {}

    def consume() -> None:
        try:
            result = run_stream_inference(s, planned, timeout_s, ref.version)
            outcome["result"] = {
                "published": result.published,
                "consumed": result.consumed,
                "actor_restarts": result.actor_restarts,
            }
        except Exception as error:  # noqa: BLE001 - reported in the results
            outcome["result"] = {"error": repr(error)}

    runner = threading.Thread(target=consume, daemon=True)
    runner.start()
    client = make_client(s)
    watch = Arrivals(client, s.predictions_topic, s.key_column)
    watch.start()

    def stop() -> dict[str, Any]:
        runner.join(timeout=timeout_s + 60)
        watch.stop()
        client.close()
        if active_job(s):
            stop_stream(s)
        return outcome.get("result", {"error": "still running"})

    return Variant(f"flink-{delivery}", s, stop, watch)


def start_plain_variant(
    base: Settings, ref: ModelRef, tag: str, planned: int, timeout_s: float
) -> Variant:
    s = variant_settings(base, tag, "plain", base.flink_stream_delivery)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    process = context.Process(
        target=plain_raw_loop, args=(s, ref, planned, timeout_s, ready, results), daemon=True
    )
    process.start()
    if not ready.wait(120):
        process.kill()
        raise RuntimeError("the plain process did not start within 120 s")
    client = make_client(s)
    watch = Arrivals(client, s.predictions_topic, s.key_column)
    watch.start()

    def stop() -> dict[str, Any]:
        try:
            outcome = results.get(timeout=timeout_s + 30)
        except queue.Empty:
            outcome = {"error": "no result in time"}
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
        watch.stop()
        client.close()
        return outcome

    return Variant("plain", s, stop, watch)


class Events:
    """Fresh raw events, each id used once in the whole run."""

    def __init__(self, s: Settings, tag: str) -> None:
        self.s, self.tag, self.batches = s, tag, 0

    def take(self, n: int) -> list[dict[str, Any]]:
        self.batches += 1
        return demo_events(self.s, n, f"e2e-{self.tag}-b{self.batches}", seed=self.batches)


def send(v: Variant, client: pulsar.Client, events: list[dict[str, Any]], rate: float | None):
    v.events += len(events)
    return publish_raw(client, v.s.raw_events_topic, events, v.s.key_column, rate)


def latency_phase(
    v: Variant, client: pulsar.Client, events: list[dict[str, Any]], rate: float, drain_s: float
) -> dict[str, Any]:
    lake_caught_up(v, time.monotonic(), drain_s)
    sent = send(v, client, events, rate)
    v.watch.wait_for(sent, drain_s)
    latencies, missing = match_latencies(sent, v.watch.arrived)
    return {"rate": rate, "missing": missing, **summarize(latencies)}


def lake_read(v: Variant) -> int | None:
    """Features messages the broker has handed the lake job's subscription (its source reads
    at most a receiver queue, 1,000, ahead of its processing; every event sent is valid);
    None: no lake job."""
    stats = broker_stats(v.s, v.s.features_topic)
    subscription = (stats or {}).get("subscriptions", {}).get(job_name(v.s, LAKE))
    return None if subscription is None else subscription.get("msgOutCounter", 0)


def lake_caught_up(v: Variant, since: float, timeout_s: float) -> float | None:
    """Seconds from `since` (time.monotonic) until the lake job has read every event sent
    (it writes the Iceberg tables beside the real-time path and competes for the same cores:
    a latency phase starts once it has caught up); None without a lake job or in time."""
    while time.monotonic() - since < timeout_s:
        read = lake_read(v)
        if read is None:
            return None
        if read >= v.events:
            return round(time.monotonic() - since, 2)
        time.sleep(0.2)
    return None


def lake_committed(v: Variant, timeout_s: float) -> None:
    """Wait for the lake job's next completed checkpoint (its Iceberg commit): after a burst
    it writes and commits a backlog, a CPU burst a latency phase should not measure."""
    job = active_job(v.s, LAKE) if v.name.startswith("flink") else None
    if job is None:
        return
    url = f"{v.s.flink_rest_url}/jobs/{job}/checkpoints"
    after = time.time() * 1000
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        completed = httpx.get(url, timeout=10).json()["latest"]["completed"]
        if completed is not None and completed["trigger_timestamp"] > after:
            return
        time.sleep(1.0)


def sustained_phase(
    v: Variant, client: pulsar.Client, events: list[dict[str, Any]], drain_s: float
) -> dict[str, Any]:
    began = time.monotonic()
    sent = send(v, client, events, None)
    v.watch.wait_for(sent, drain_s)
    arrived = [v.watch.arrived[k] for k in sent if k in v.watch.arrived]
    seconds = max(arrived) - min(sent.values()) if arrived else math.nan
    lake_s = lake_caught_up(v, began, drain_s)
    lake_committed(v, 2 * drain_s)
    return {
        "events": len(sent),
        "arrived": len(arrived),
        "send_rate": round(len(sent) / (max(sent.values()) - min(sent.values())), 1),
        "events_per_s": round(len(arrived) / seconds, 1) if arrived else math.nan,
        "lake_events_per_s": round(len(sent) / lake_s, 1) if lake_s else None,
    }


def recovery_phase(
    v: Variant, client: pulsar.Client, events: list[dict[str, Any]], rate: float, what: str
) -> dict[str, Any]:
    """Events at `rate`; KILL_AFTER_S in, kill -9 of `what` ("consumer" or "taskmanager"):
    seconds from the kill to the first prediction published of an event sent after it."""
    sent: dict[str, float] = {}
    sender = threading.Thread(target=lambda: sent.update(send(v, client, events, rate)))
    sender.start()
    time.sleep(KILL_AFTER_S)
    restart_s = None
    if what == "consumer":
        [pid] = reading_pids(v.s)  # the actor reading (a spare reads nothing)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
    else:
        pid = job_taskmanager(v.s, ClusterDirs.default(v.s), active_job(v.s) or "")
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.01)
        start_cluster(v.s)  # as a supervisor would: a new TaskManager
        restart_s = round(time.time() - killed_at, 2)
    sender.join()
    v.watch.wait_for(sent, 120)
    after = [
        v.watch.published[k] for k, at in sent.items() if at > killed_at and k in v.watch.published
    ]
    latencies, missing = match_latencies(sent, v.watch.arrived)
    return {
        "killed": what,
        "recovery_s": round(min(after) - killed_at, 2) if after else math.nan,
        "new_taskmanager_started_s": restart_s,
        "missing": missing,
        "latency": summarize(latencies),
        "p50_ms_by_second": latency_by_second(sent, v.watch.arrived),
        "killed_at_s": KILL_AFTER_S,
    }


def exactness(v: Variant) -> dict[str, Any]:
    """Each event's prediction once on the topic and once in Iceberg, counted from outside."""
    key = v.s.key_column
    on_topic = Counter(json.loads(m.data())[key] for m in read_all(v.s, v.s.predictions_topic))
    table = load_table(v.s, v.s.stream_predictions_table).scan().to_arrow()
    in_table = Counter(table[key].to_pylist())
    return {
        "events": v.events,
        "topic_unique": len(on_topic),
        "topic_repeats": sum(on_topic.values()) - len(on_topic),
        "table_unique": len(in_table),
        "table_repeats": sum(in_table.values()) - len(in_table),
        "exactly_once": len(on_topic) == len(in_table) == v.events
        and sum(on_topic.values()) == sum(in_table.values()) == v.events,
    }


def clean_up(s: Settings) -> list[str]:
    """Delete the variant's tables, namespace and topics; what could not be deleted."""
    problems = []
    catalog = load_catalog(s)
    try:
        for table in catalog.list_tables(s.namespace):
            catalog.purge_table(table)
        catalog.drop_namespace(s.namespace)
    except Exception as error:  # noqa: BLE001 - a variant without tables (plain)
        problems.append(f"{s.namespace}: {error}")
    topics = (s.raw_events_topic, s.features_topic, s.quarantine_topic, s.predictions_topic)
    for topic in (*topics, s.dead_letter_topic):
        for suffix in ("/partitions", ""):
            url = f"{s.pulsar_admin_url}/admin/v2/{topic_path(topic)}{suffix}?force=true"
            response = httpx.delete(url, headers=admin_headers(s), timeout=60)
            if response.status_code in (204, 200):
                break
    return problems


def run_variant(
    v: Variant, args: argparse.Namespace, events: Events, kills: bool
) -> dict[str, Any]:
    client = make_client(v.s)
    try:
        began = time.monotonic()
        sent = send(v, client, events.take(5), 10)
        if not v.watch.wait_for(sent, 300):
            raise RuntimeError(f"{v.name}: no prediction of the warm-up events in 300 s")
        v.phases["warm_up_s"] = round(time.monotonic() - began, 2)
        # First the capacity: its burst also warms the JIT of the Flink job (a cold
        # TaskManager runs its code interpreted for the first seconds; see recovery below).
        v.phases["sustained"] = sustained_phase(v, client, events.take(args.burst), 300)
        sustained = v.phases["sustained"]["events_per_s"]
        rate_n = int(args.rate * args.seconds)
        v.phases["at_rate"] = latency_phase(v, client, events.take(rate_n), args.rate, 120)
        if not math.isnan(sustained):
            for share in SHARES:
                rate = share * sustained
                n = min(int(rate * args.seconds), args.burst)  # the plain loop is fast
                v.phases[f"at_{round(share * 100)}pct"] = latency_phase(
                    v, client, events.take(n), rate, 120
                )
        if kills:
            rate = min(args.rate, 0.8 * sustained) if not math.isnan(sustained) else args.rate
            n = int(rate * (KILL_AFTER_S + args.seconds))
            for what in ("consumer", "taskmanager"):
                v.phases[f"kill_{what}"] = recovery_phase(v, client, events.take(n), rate, what)
    finally:
        client.close()
    return v.phases


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, what in zip(axes, ("consumer", "taskmanager"), strict=True):
        for name, result in summary["variants"].items():
            phase = result.get("phases", {}).get(f"kill_{what}")
            if phase:
                ax.plot(phase["p50_ms_by_second"], label=name)
                ax.axvline(phase["killed_at_s"], color="red", linestyle="--", label="kill -9")
        ax.set_title(f"kill -9 of the {what}")
        ax.set_xlabel("second of the stream (by send time)")
        ax.set_yscale("log")
        ax.legend()
    axes[0].set_ylabel("median raw event -> prediction latency (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(summary: dict[str, Any]) -> None:
    """Per variant: the sustained rate, then p50 / p99 / max ms at each measured rate."""
    latency_phases = ["at_rate"] + [f"at_{round(share * 100)}pct" for share in SHARES]
    print(f"\n{'variant':<22}{'ev/s':>9}" + "".join(f"{p:>26}" for p in latency_phases))
    for name, result in summary["variants"].items():
        phases = result.get("phases", {})
        sustained = phases.get("sustained", {}).get("events_per_s", "-")
        cells = []
        for p in latency_phases:
            x = phases.get(p, {})
            cells.append(f"{x.get('p50_ms', '-')}/{x.get('p99_ms', '-')}/{x.get('max_ms', '-')}")
        print(f"{name:<22}{sustained:>9}" + "".join(f"{c:>26}" for c in cells))
        for what in ("consumer", "taskmanager"):
            kill = phases.get(f"kill_{what}")
            if kill:
                print(f"  kill -9 {what}: first new prediction after {kill['recovery_s']} s")
        if "exactness" in result:
            print(f"  exactness: {result['exactness']}")
    print(f"fixed steps: {json.dumps(summary['fixed_steps_s'])}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument(
        "--deliveries",
        nargs="+",
        default=["at-least-once", "exactly-once"],
        choices=["at-least-once", "exactly-once"],
    )
    parser.add_argument("--no-kills", action="store_true")
    parser.add_argument("--no-plain", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base = get_settings()
    tag = uuid.uuid4().hex[:6]
    started = time.monotonic()
    cluster_started = not healthy(base)
    if cluster_started:
        start_cluster(base)
    fixed = {"flink_cluster_start": round(time.monotonic() - started, 2)}
    model_settings, ref, origin = champion(base, tag)
    base = base.model_copy(update={"database_url": model_settings.database_url})
    per_variant = int(args.rate * args.seconds + args.burst * (1 + len(SHARES)) + 5)
    per_variant += 2 * int(args.rate * (KILL_AFTER_S + args.seconds))
    timeout_s = 1800.0
    summary: dict[str, Any] = {
        "benchmark": "end_to_end",
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "model": {"version": ref.version, "origin": origin},
        "args": vars(args),
        "targets": TARGETS,
        "variants": {},
        "fixed_steps_s": fixed,
    }
    names = [f"flink-{d}" for d in args.deliveries] + ([] if args.no_plain else ["plain"])
    for i, name in enumerate(names):
        began = time.monotonic()
        if name == "plain":
            variant = start_plain_variant(base, ref, tag, per_variant, timeout_s)
        else:
            delivery = name.removeprefix("flink-")
            variant = start_flink_variant(base, ref, tag, delivery, per_variant, timeout_s)
        fixed[f"{name}_start"] = round(time.monotonic() - began, 2)
        events = Events(variant.s, f"{tag}-{i}")
        result: dict[str, Any] = {}
        try:
            kills = i == 0 and not args.no_kills and name != "plain"
            result["phases"] = run_variant(variant, args, events, kills)
        except Exception as error:  # noqa: BLE001 - reported in the results
            result["error"] = repr(error)
        finally:
            # Bounded runs end at their planned count: what was not sent is sent now, unused.
            left = per_variant - variant.events
            if left > 0:
                with_client = make_client(variant.s)
                send(variant, with_client, events.take(left), None)
                with_client.close()
            result["consumer"] = variant.stop()
            if name != "plain":
                result["exactness"] = exactness(variant)
            if result.get("exactness", {}).get("exactly_once", True):
                result["cleanup_problems"] = clean_up(variant.s)
            else:  # kept for a look
                result["kept"] = {
                    "namespace": variant.s.namespace,
                    "settings": variant.s.model_dump(
                        mode="json",
                        include={
                            "features_topic",
                            "predictions_topic",
                            "stream_subscription",
                            "raw_events_topic",
                            "namespace",
                        },
                    ),
                }
        summary["variants"][name] = result
    if cluster_started:
        stop_cluster(base)
    summary = without_nan(summary)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "end_to_end.json").write_text(json.dumps(summary, indent=1))
    plot(summary, RESULTS / "end_to_end.png")
    print_table(summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
