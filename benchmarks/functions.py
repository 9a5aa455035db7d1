"""Benchmark: Pulsar Functions on the Ray runtime against Pulsar's own Python functions worker,
with a plain consume -> process -> produce -> ack loop as the raw limit, in one run on one broker.

The run starts a standalone broker of its own with Pulsar's functions worker (no authentication)
on free loopback ports, its state in a temporary folder, through infra/services.py as `make up`
starts the platform's, and stops it however the run ends. Every variant reads and writes that
broker; the Ray runtime's instances run on the platform's Ray cluster (`make up`).

Functions: `Exclaim` of benchmarks/functions_trivial.py (the input with "!" appended: the
runtime's own per-message cost) and `IrisPredict` of examples/functions/iris_functions.py (one
prediction per message; a small tree registered in a registry of the run's own, its user config
from `champion_user_config`). Variants, each with input and output topics of its own and the
same payloads:
- ray: `functions_admin.create` (detached Ray actors, parallelism 1, ATLEAST_ONCE);
- ray-effectively-once: the same under EFFECTIVELY_ONCE (the trivial function only);
- pulsar-worker: `pulsar-admin functions create` on the broker's functions worker (parallelism 1,
  ATLEAST_ONCE, subscription from Earliest as on Ray);
- raw: one process: receive a micro-batch as a Ray instance does (up to its batch of messages or
  stream_batch_wait_ms), call the same function object's process() with a minimal context, send,
  flush, acknowledge.

1. Throughput: N messages are published first, then the function is started. msgs/s =
   (n - 1) / (last - first output publish timestamp), so start-up is not counted; the time from
   the start command to the first output is the fixed start cost.
2. Latency at a fixed rate, the function running: output publish timestamp - its input's send
   time, matched through the output's `__pfn_input_msg_id__` (Pulsar's property; both runtimes
   and the raw loop set it); the arrival at a reader here is recorded too.
Every output is checked against the expected answer. The run's functions are deleted at the end;
its topics live only on its own broker, whose state folder is removed with it.

Usage: python -m benchmarks.functions [--messages 20000] [--rate 200] [--duration 10] [--quick]
Prints a table and saves benchmarks/results/functions-<timestamp>.json and functions-latest.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import pulsar
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from benchmarks.streaming import (
    match_latencies,
    rate_between,
    ratio,
    ray_cpus_free,
    summarize,
    without_nan,
)
from infra.services import SERVICES, ServiceError
from infra.services import start as start_service
from infra.services import stop as stop_service
from mlplatform.connectors.pulsar_io import make_client, receive_batch
from mlplatform.inference.stream import functions_admin
from mlplatform.inference.stream.function_context import SERDE
from mlplatform.inference.stream.function_spec import FunctionSpec, load_function
from mlplatform.inference.stream.pulsar_functions import (
    INPUT_ID,
    INPUT_TOPIC,
    FunctionInstance,
    champion_user_config,
    encoded_id,
)
from mlplatform.registry import model_registry
from mlplatform.settings import PROJECT_DIR, Settings, get_settings

RESULTS = Path(__file__).parent / "results"
TRIVIAL_PY = str(Path(__file__).resolve().parent / "functions_trivial.py")
IRIS_PY = str(PROJECT_DIR / "examples" / "functions" / "iris_functions.py")
IRIS_ORDER = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
RAY, RAY_EO, PULSAR, RAW = "ray", "ray-effectively-once", "pulsar-worker", "raw"
# A Ray instance's micro-batch (functions_admin starts instances with FunctionInstance's default).
RUNTIME_BATCH: int = inspect.signature(FunctionInstance).parameters["batch"].default


# Pure parts (unit-tested).


def id_key(message_id: pulsar.MessageId) -> str:
    """A message's place on its topic, the same from a producer's receipt and from a consumer
    (whose id carries more fields): ledger:entry:batch index."""
    return f"{message_id.ledger_id()}:{message_id.entry_id()}:{max(message_id.batch_index(), 0)}"


def input_key(encoded: str) -> str:
    """The id_key of the input an output answers: its `__pfn_input_msg_id__` is the base64 of
    the input message id's serialize(), URL-safe from Pulsar's worker, standard from the Ray
    runtime (urlsafe_b64decode reads both)."""
    return id_key(pulsar.MessageId.deserialize(base64.urlsafe_b64decode(encoded)))


def payloads(function: str, count: int, first: int = 0) -> list[str]:
    """Messages for `function`: "message-<i>" (not a number: the identity serde would make it
    an int) for the trivial one, Iris rows in the canonical order for IrisPredict."""
    if function == "trivial":
        return [f"message-{i}" for i in range(first, first + count)]
    rows = load_iris().data
    return [",".join(f"{v:g}" for v in rows[i % len(rows)]) for i in range(first, first + count)]


def drain_figures(sent: dict[str, float], published: dict[str, float], started: float) -> dict:
    """Throughput of the outputs answering `sent` (input key -> send time) from their publish
    timestamps (`published`: input key -> seconds), and the fixed start cost from `started`,
    when the function was told to start (time.time())."""
    stamps = [published[k] for k in sent if k in published]
    if not stamps:
        return {"outputs": 0, "missing": len(sent), "msgs_per_s": math.nan}
    first, last = min(stamps), max(stamps)
    return {
        "outputs": len(stamps),
        "missing": len(sent) - len(stamps),
        "msgs_per_s": round(rate_between(len(stamps), first, last), 1),
        "span_s": round(last - first, 3),
        "start_to_first_output_s": round(first - started, 2),
        "wall_s_with_startup": round(last - started, 2),
    }


def latency_figures(
    sent: dict[str, float], published: dict[str, float], arrived: dict[str, float]
) -> dict[str, Any]:
    """Latency (ms) from each input's send time to its output's publish timestamp, and to the
    output's arrival at a reader; how many inputs had no output."""
    to_publish, missing = match_latencies(sent, published)
    to_arrival, _ = match_latencies(sent, arrived)
    return {
        "missing": missing,
        "to_output_publish": summarize(to_publish),
        "to_arrival": summarize(to_arrival),
    }


def wrong_outputs(
    bodies: dict[str, str], values: dict[str, str], expect: Callable[[list[str]], list[str]]
) -> int:
    """How many outputs (input key -> output) differ from `expect` of their input payloads."""
    keys = [k for k in bodies if k in values]
    expected = expect([bodies[k] for k in keys])
    return sum(values[k] != e for k, e in zip(keys, expected, strict=True))


def figures(results: dict[str, Any]) -> dict[str, float]:
    """One variant's table figures: msgs/s, p50/p99 (ms, to the output's publish) and the start
    cost (s); NaN where the variant failed."""
    throughput, latency = results.get("throughput", {}), results.get("latency", {})
    nan = math.nan
    return {
        "msgs_per_s": throughput.get("msgs_per_s", nan),
        "p50_ms": latency.get("to_output_publish", {}).get("p50_ms", nan),
        "p99_ms": latency.get("to_output_publish", {}).get("p99_ms", nan),
        "missing": latency.get("missing", nan),
        "start_s": throughput.get("start_to_first_output_s", nan),
    }


def ratios(variants: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per variant of one function: msgs/s over the raw limit's and over Pulsar's worker's,
    p99 latency over Pulsar's worker's."""
    table = {name: figures(result) for name, result in variants.items()}
    raw, worker = table.get(RAW, {}), table.get(PULSAR, {})
    nan = math.nan
    return {
        name: {
            "msgs_per_s_vs_raw": ratio(row["msgs_per_s"], raw.get("msgs_per_s", nan)),
            "msgs_per_s_vs_pulsar_worker": ratio(row["msgs_per_s"], worker.get("msgs_per_s", nan)),
            "p99_vs_pulsar_worker": ratio(row["p99_ms"], worker.get("p99_ms", nan)),
        }
        for name, row in table.items()
    }


def table_rows(functions: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The printed table: function, variant, msgs/s, x raw, x worker, p50, p99, missing, start."""
    rows = []
    for function, variants in functions.items():
        relative = ratios(variants)
        for name, result in variants.items():
            row, rel = figures(result), relative[name]
            rows.append(
                [
                    function,
                    name,
                    _fmt(row["msgs_per_s"], 0),
                    _fmt(rel["msgs_per_s_vs_raw"], 2),
                    _fmt(rel["msgs_per_s_vs_pulsar_worker"], 2),
                    _fmt(row["p50_ms"]),
                    _fmt(row["p99_ms"]),
                    _fmt(row["missing"], 0),
                    _fmt(row["start_s"]),
                ]
            )
    return rows


# Printed columns and their widths (the first two left-aligned).
COLUMNS = {
    "function": 10,
    "variant": 22,
    "msg/s": 9,
    "x raw": 8,
    "x worker": 10,
    "p50 ms": 9,
    "p99 ms": 9,
    "missing": 9,
    "start s": 9,
}


def _cell(i: int, text: str) -> str:
    width = list(COLUMNS.values())[i]
    return f"{text:<{width}}" if i < 2 else f"{text:>{width}}"


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float | int) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:,.{digits}f}"
    return "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages for throughput")
    parser.add_argument("--rate", type=float, default=200, help="msg/s for the latency run")
    parser.add_argument("--duration", type=float, default=10, help="seconds of paced sending")
    parser.add_argument("--drain-s", type=float, default=30, help="wait for late outputs")
    parser.add_argument(
        "--functions", nargs="+", choices=("trivial", "iris"), default=["trivial", "iris"]
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=(RAY, RAY_EO, PULSAR, RAW),
        default=[RAY, RAY_EO, PULSAR, RAW],
    )
    parser.add_argument("--quick", action="store_true", help="3,000 messages, 100 msg/s for 5 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rate = min(args.messages, 3000), min(args.rate, 100)
        args.duration, args.drain_s = min(args.duration, 5), min(args.drain_s, 15)
    return args


# The broker with Pulsar's functions worker.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


class WorkerBroker:
    """A standalone broker with Pulsar's functions worker, no authentication, on free loopback
    ports, its state (and this run's registry and function store) in a temporary folder."""

    def __init__(self, base: Settings) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlp-bench-functions-"))
        (self.root / "pulsar").symlink_to(base.pulsar_home)  # the installed distribution
        self.s = Settings(
            local_dir=self.root,
            pulsar_service_url=f"pulsar://127.0.0.1:{_free_port()}",
            pulsar_admin_url=f"http://127.0.0.1:{_free_port()}",
            pulsar_functions_worker=True,
            pulsar_auth=False,
            pulsar_auth_token=None,
            pulsar_auth_token_file=None,
            database_url=f"sqlite:///{self.root / 'platform.db'}",
            ray_address=base.ray_address,
        )
        self.steps: dict[str, float] = {}

    def start(self) -> None:
        started = time.monotonic()
        start_service(SERVICES["pulsar"], self.s)
        self.steps["broker_healthy_s"] = round(time.monotonic() - started, 1)
        # The worker answers, and public/default exists, some seconds after the broker.
        url = f"{self.s.pulsar_admin_url}/admin/v3/functions/public/default"
        deadline = time.monotonic() + 120
        while not _answers(url):
            if time.monotonic() > deadline:
                raise ServiceError(f"the functions worker at {url} did not answer in 120 s")
            time.sleep(0.5)
        self.steps["functions_api_ready_s"] = round(time.monotonic() - started, 1)
        # What any pulsar-admin call costs (a JVM start), to set against `functions create`.
        listed, seconds = self.pulsar_admin(
            "functions", "list", "--tenant", "public", "--namespace", "default"
        )
        if listed.returncode != 0:
            raise ServiceError(f"pulsar-admin functions list failed: {listed.stderr[-1500:]}")
        self.steps["pulsar_admin_list_s"] = round(seconds, 2)

    def pulsar_admin(self, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        completed = subprocess.run(
            [
                str(self.s.pulsar_home / "bin" / "pulsar-admin"),
                "--admin-url",
                self.s.pulsar_admin_url,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        return completed, time.monotonic() - started

    def instance_logs(self, name: str) -> str:
        logs = sorted((self.s.log_dir / "pulsar-functions").rglob(f"*{name}*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs)

    def stop(self) -> list[str]:
        try:
            stop_service(SERVICES["pulsar"], self.s)
        except Exception as error:  # noqa: BLE001 - reported; the folder still goes
            return [f"stopping the worker broker: {error!r}"]
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
        return []


# Publishing and reading outputs.


def publish(
    client: pulsar.Client, topic: str, messages: list[str], rate: float | None
) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    """Send `messages` unbatched (each its own entry), paced at `rate` per second (None: as fast
    as possible). Returns (input key -> send time, input key -> payload, publishing figures)."""
    producer = client.create_producer(
        topic, batching_enabled=False, block_if_queue_full=True, max_pending_messages=5000
    )
    sent: dict[str, float] = {}
    bodies: dict[str, str] = {}
    errors: list[str] = []

    def receipt(at: float, body: str) -> Callable[[pulsar.Result, pulsar.MessageId], None]:
        def done(result: pulsar.Result, message_id: pulsar.MessageId) -> None:
            if result != pulsar.Result.Ok:
                errors.append(str(result))
                return
            key = id_key(message_id)
            sent[key], bodies[key] = at, body

        return done

    lag = 0.0
    started = time.perf_counter()
    for i, body in enumerate(messages):
        if rate:
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0.0005:
                time.sleep(ahead)
            lag = max(lag, -ahead)
        producer.send_async(body.encode(), receipt(time.time(), body))
    producer.flush()
    deadline = time.monotonic() + 30  # the last receipts' callbacks may trail the flush
    while len(sent) + len(errors) < len(messages) and time.monotonic() < deadline:
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    producer.close()
    if errors or len(sent) != len(messages):
        raise RuntimeError(
            f"publishing to {topic}: {len(sent)} of {len(messages)} sent, errors {errors[:3]}"
        )
    return (
        sent,
        bodies,
        {
            "sent": len(messages),
            "seconds": round(seconds, 3),
            "achieved_rate": round(len(messages) / seconds, 1),
            "max_behind_schedule_ms": round(lag * 1000, 2),
        },
    )


class Outputs(threading.Thread):
    """Reads an output topic from the start: per input (its `__pfn_input_msg_id__`) the first
    output's publish timestamp, arrival here (time.time()) and value; later ones are counted."""

    def __init__(self, client: pulsar.Client, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = client.subscribe(
            topic, "bench-outputs", initial_position=pulsar.InitialPosition.Earliest
        )
        self.published: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self.values: dict[str, str] = {}
        self.duplicates = self.unmatched = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                message = self.consumer.receive(timeout_millis=100)
            except pulsar.Timeout:
                continue
            now = time.time()
            self.consumer.acknowledge(message)
            try:
                key = input_key(message.properties()[INPUT_ID])
            except Exception:  # noqa: BLE001 - no or no readable input id: counted
                self.unmatched += 1
                continue
            if key in self.published:
                self.duplicates += 1
                continue
            self.arrived[key] = now
            self.published[key] = message.publish_timestamp() / 1000
            self.values[key] = message.data().decode(errors="replace")

    def wait_for(self, keys: dict[str, float], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.published) >= len(keys) and all(k in self.published for k in keys):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)
        self.consumer.close()


# The raw limit: the same function object in a plain pulsar-client loop, in its own process.


class MinimalContext:
    """What the two functions ask of a context: user config, logger, metrics (dropped)."""

    def __init__(self, user_config: dict[str, str]) -> None:
        self.user_config = user_config
        self.logger = logging.getLogger("benchmarks.functions.raw")

    def get_user_config_value(self, key: str) -> Any:
        return self.user_config.get(key)

    def get_user_config_map(self) -> dict[str, str]:
        return dict(self.user_config)

    def get_logger(self) -> logging.Logger:
        return self.logger

    def record_metric(self, name: str, value: float) -> None:
        pass


def raw_loop(
    s: Settings,
    py: str,
    classname: str,
    user_config: dict[str, str],
    topics: tuple[str, str],
    halt: Event,
    results: multiprocessing.Queue,
) -> None:
    """consume a micro-batch -> process() each -> send -> flush -> acknowledge, until `halt`."""
    function, context = load_function(py, classname), MinimalContext(user_config)
    call = function.process if hasattr(function, "process") else lambda v, _: function(v)
    client = make_client(s)
    consumer = client.subscribe(
        topics[0],
        "bench-raw",
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=RUNTIME_BATCH,
    )
    producer = client.create_producer(topics[1], block_if_queue_full=True)
    errors: list[str] = []

    def sent(result: pulsar.Result, _: object) -> None:
        if result != pulsar.Result.Ok:
            errors.append(str(result))

    processed, started = 0, time.monotonic()
    try:
        while not halt.is_set():
            messages = receive_batch(consumer, RUNTIME_BATCH, s.stream_batch_wait_ms)
            for message in messages:
                result = call(SERDE.deserialize(message.data()), context)
                if result is not None:
                    properties = {INPUT_TOPIC: message.topic_name(), INPUT_ID: encoded_id(message)}
                    producer.send_async(SERDE.serialize(result), sent, properties=properties)
            producer.flush()
            for message in messages:
                consumer.acknowledge(message)
            processed += len(messages)
    finally:
        results.put(
            {"processed": processed, "errors": len(errors), "seconds": time.monotonic() - started}
        )
        producer.close()
        consumer.close()
        client.close()


class RawProcess:
    """The raw loop in a process of its own (as a runtime's instance is)."""

    def __init__(self, s: Settings, function: BenchFunction, topics: tuple[str, str]) -> None:
        context = multiprocessing.get_context("spawn")
        self.halt, self.results = context.Event(), context.Queue()
        self.process = context.Process(
            target=raw_loop,
            args=(
                s,
                function.py,
                function.classname,
                function.user_config,
                topics,
                self.halt,
                self.results,
            ),
            daemon=True,
        )
        self.process.start()

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        try:
            outcome = self.results.get(timeout=60)
        except queue.Empty:
            outcome = {"error": "no result within 60 s"}
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        return outcome


# The functions and the variants.


@dataclass(frozen=True)
class BenchFunction:
    key: str
    py: str
    classname: str
    user_config: dict[str, str]
    expect: Callable[[list[str]], list[str]]  # the right outputs of these payloads
    variants: tuple[str, ...]


def bench_functions(s: Settings, wanted: list[str]) -> list[BenchFunction]:
    """The trivial function, and IrisPredict with a small tree registered and promoted in the
    run's own registry (s.database_url)."""
    iris = load_iris()
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(iris.data, iris.target)
    labels = [str(n) for n in iris.target_names]
    row = model_registry.register(
        s,
        model,
        family="decision_tree",
        params={"max_depth": 3},
        metrics={},
        training_table="iris",
        training_snapshot_id=0,
        training_rows=len(iris.target),
        feature_order=IRIS_ORDER,
        label_names=labels,
    )
    model_registry.promote(s, row.version, "the functions benchmark's model")

    def predict(bodies: list[str]) -> list[str]:
        rows = [[float(v) for v in body.split(",")] for body in bodies]
        return [labels[int(p)] for p in model.predict(rows)] if rows else []

    functions = [
        BenchFunction(
            "trivial",
            TRIVIAL_PY,
            "functions_trivial.Exclaim",
            {},
            lambda bodies: [f"{b}!" for b in bodies],
            (RAY, RAY_EO, PULSAR, RAW),
        ),
        BenchFunction(
            "iris",
            IRIS_PY,
            "iris_functions.IrisPredict",
            champion_user_config(s),
            predict,
            (RAY, PULSAR, RAW),
        ),
    ]
    return [f for f in functions if f.key in wanted]


class Bench:
    """This run's client, names, and the functions it started (deleted by `clean_up`)."""

    def __init__(self, broker: WorkerBroker, s: Settings, args: argparse.Namespace) -> None:
        self.broker, self.s, self.args = broker, s, args
        self.tag = uuid.uuid4().hex[:6]
        self.client = make_client(s)
        self.ray_functions: list[str] = []
        self.worker_functions: list[str] = []

    def start(
        self, function: BenchFunction, variant: str, name: str, topics: tuple[str, str]
    ) -> tuple[dict[str, float], Callable[[], Any]]:
        """Start `variant` of `function` reading topics[0], writing topics[1]: (what each
        start step cost, s; a call that stops it and returns what it reports)."""
        started = time.monotonic()
        if variant == RAW:
            raw = RawProcess(self.s, function, topics)
            return {"spawn_s": round(time.monotonic() - started, 2)}, raw.stop
        if variant == PULSAR:
            completed, seconds = self.broker.pulsar_admin(
                "functions", "create", "--py", function.py, "--classname", function.classname,
                "--tenant", "public", "--namespace", "default", "--name", name,
                "--inputs", topics[0], "--output", topics[1],
                "--user-config", json.dumps(function.user_config),
                "--parallelism", "1", "--processing-guarantees", "ATLEAST_ONCE",
                "--subs-position", "Earliest",
            )  # fmt: skip
            if completed.returncode != 0 or "Created successfully" not in completed.stdout:
                raise RuntimeError(
                    f"pulsar-admin functions create {name} failed: "
                    f"{completed.stdout[-1500:]}{completed.stderr[-1500:]}"
                )
            self.worker_functions.append(name)
            return {"pulsar_admin_create_s": round(seconds, 2)}, lambda: self.delete_worker(name)
        spec = FunctionSpec(
            name=name,
            py=function.py,
            classname=function.classname,
            inputs=(topics[0],),
            output=topics[1],
            user_config=function.user_config,
            parallelism=1,
            processing_guarantees="EFFECTIVELY_ONCE" if variant == RAY_EO else "ATLEAST_ONCE",
        )
        functions_admin.create(self.s, spec)
        self.ray_functions.append(spec.fqfn)
        seconds = round(time.monotonic() - started, 2)
        return {"functions_admin_create_s": seconds}, lambda: self.delete_ray(spec.fqfn)

    def delete_ray(self, fqfn: str) -> dict[str, Any]:
        status = functions_admin.status(self.s, fqfn)
        started = time.monotonic()
        functions_admin.delete(self.s, fqfn, purge_state=True)
        self.ray_functions.remove(fqfn)
        return {
            "delete_s": round(time.monotonic() - started, 2),
            **{k: v for k, v in status.items() if k.startswith("num")},
        }

    def delete_worker(self, name: str) -> dict[str, Any]:
        url = f"{self.s.pulsar_admin_url}/admin/v3/functions/public/default/{name}"
        status = httpx.get(f"{url}/status", timeout=30).json()
        started = time.monotonic()
        httpx.delete(url, timeout=120).raise_for_status()
        self.worker_functions.remove(name)
        return {
            "delete_s": round(time.monotonic() - started, 2),
            **{k: v for k, v in status.items() if k.startswith("num")},
        }

    def measure(self, function: BenchFunction, variant: str) -> dict[str, Any]:
        """Throughput from a pre-published backlog, then latency at the fixed rate."""
        args, name = self.args, f"bench-{self.tag}-{function.key}-{variant}"
        topics = (
            f"persistent://public/default/{name}-in",
            f"persistent://public/default/{name}-out",
        )
        load = os.getloadavg()[0]
        sent, bodies, publishing = publish(
            self.client, topics[0], payloads(function.key, args.messages), rate=None
        )
        outputs = Outputs(self.client, topics[1])
        outputs.start()
        result: dict[str, Any] = {"function": name, "loadavg_1m_at_start": load}
        started = time.time()
        stop: Callable[[], Any] | None = None
        try:
            result["start_steps"], stop = self.start(function, variant, name, topics)
            drained = outputs.wait_for(sent, 120 + args.messages / 100)
            result["throughput"] = {
                "publishing": publishing,
                "complete": drained,
                **drain_figures(sent, outputs.published, started),
            }
            if not drained:
                raise RuntimeError(f"{name}: {len(outputs.published)} of {len(sent)} outputs")
            paced = payloads(function.key, int(args.rate * args.duration), first=args.messages)
            late_sent, late_bodies, paced_publishing = publish(
                self.client, topics[0], paced, args.rate
            )
            outputs.wait_for(late_sent, args.drain_s)
            result["latency"] = {
                "rate": args.rate,
                "duration_s": args.duration,
                "publishing": paced_publishing,
                **latency_figures(late_sent, outputs.published, outputs.arrived),
            }
            bodies.update(late_bodies)
        finally:
            try:
                result["stopped"] = stop() if stop else None
            finally:
                outputs.stop()
        result["outputs"] = {
            "duplicates": outputs.duplicates,
            "without_input_id": outputs.unmatched,
            "wrong": wrong_outputs(bodies, outputs.values, function.expect),
        }
        return result

    def clean_up(self) -> list[str]:
        """Delete the functions still running (a variant that failed half-way)."""
        problems = []
        for fqfn in list(self.ray_functions):
            try:
                functions_admin.delete(self.s, fqfn, purge_state=True)
            except Exception as error:  # noqa: BLE001 - then kill its actor by name
                problems.append(f"deleting {fqfn}: {error!r}")
                import ray

                with contextlib.suppress(ValueError):
                    actor = ray.get_actor(f"{fqfn}:0", namespace=functions_admin.FUNCTIONS)
                    ray.kill(actor, no_restart=True)
        for name in list(self.worker_functions):
            url = f"{self.s.pulsar_admin_url}/admin/v3/functions/public/default/{name}"
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(url, timeout=60)
        with contextlib.suppress(Exception):
            self.client.close()
        return problems


# Report.


def print_table(summary: dict[str, Any]) -> None:
    machine, args = summary["machine"], summary["args"]
    print(f"\n=== Pulsar Functions benchmark ({summary['started_at']}) ===")
    print(
        f"machine: {machine['cpus']} CPUs, load average 1m {machine['loadavg_start'][0]:.2f} at "
        f"start, {machine['loadavg_end'][0]:.2f} at end; {args['messages']:,} messages drained, "
        f"latency at {args['rate']:g} msg/s for {args['duration']:g} s"
    )
    print(f"fixed steps (s): {summary['broker_steps']}")
    print()
    for row in [list(COLUMNS), *table_rows(summary["functions"])]:
        print("".join(_cell(i, text) for i, text in enumerate(row)))
    print("\nstart steps (s) and outputs per variant")
    for function, variants in summary["functions"].items():
        for name, result in variants.items():
            if "error" in result:
                print(f"  {function}/{name}: ERROR {result['error'][:300]}")
                continue
            print(
                f"  {function}/{name}: {result.get('start_steps')}, delete "
                f"{result.get('stopped', {}).get('delete_s', '-')}; outputs {result['outputs']}"
            )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loadavg_start = os.getloadavg()
    started_at = datetime.now(UTC)
    broker = WorkerBroker(get_settings())
    bench: Bench | None = None
    functions: dict[str, dict[str, Any]] = {}
    free, problems = math.nan, []
    try:
        broker.start()
        print(f"worker broker up: {broker.steps}", flush=True)
        free = ray_cpus_free(broker.s)  # connects to the platform's Ray
        cpus = broker.s.stream_actor_cpus if free >= broker.s.stream_actor_cpus else 0.0
        s = broker.s.model_copy(update={"stream_actor_cpus": cpus})
        bench = Bench(broker, s, args)
        for function in bench_functions(s, args.functions):
            functions[function.key] = {}
            for variant in [v for v in function.variants if v in args.variants]:
                try:
                    result = bench.measure(function, variant)
                except Exception as error:  # noqa: BLE001 - reported, the others still run
                    logs = broker.instance_logs(variant) if variant == PULSAR else ""
                    result = {"error": f"{error!r}\n{logs}"}
                functions[function.key][variant] = result
                print(f"{function.key}/{variant}: {figures(result)}", flush=True)
    finally:
        problems = bench.clean_up() if bench else []
        problems += broker.stop()
    summary: dict[str, Any] = {
        "benchmark": "Pulsar Functions: Ray runtime, Pulsar's functions worker, raw loop",
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg(),
            "ray_cpus_free_at_start": free,
            "note": "shared machine: both brokers, Ray, Prefect and other jobs run on the same "
            "cores during the benchmark",
        },
        "args": vars(args),
        "settings": {
            "runtime_batch": RUNTIME_BATCH,
            "stream_batch_wait_ms": broker.s.stream_batch_wait_ms,
            "ray_instance_cpus": bench.s.stream_actor_cpus if bench else None,
            "ray_address": broker.s.ray_address,
        },
        "broker_steps": broker.steps,
        "functions": functions,
        "ratios": {k: ratios(v) for k, v in functions.items()},
        "cleanup_problems": problems,
    }
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(without_nan(summary), indent=2, default=str) + "\n"
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"functions-{stamp}.json").write_text(text)
    (RESULTS / "functions-latest.json").write_text(text)
    print_table(summary)
    print(f"\nsaved {RESULTS / f'functions-{stamp}.json'}", flush=True)


if __name__ == "__main__":
    main()
