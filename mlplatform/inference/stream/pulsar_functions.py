"""Run Pulsar Functions, unmodified, on Ray actors instead of a Pulsar functions worker.

A file written for Pulsar Functions (a class deriving from `pulsar.Function` with
`process(self, input, context)`, or a plain `process(input)` function) is loaded from its path.
With a window (`--window-length-count` or `--window-length-duration-ms`) the class's
`process(inputs, context)` gets each closed window's records (function_windows.WindowRecord).
Pickle serdes are refused: nothing is unpickled from a topic.

Delivery protocol of one instance, per batch of messages:
  1. Process: call `process` per message (or per closed window); a call that raises is tried
     again up to `max_message_retries` times, then the message (a window's messages) goes to the
     dead-letter topic. Outputs and `context.publish` calls are sent asynchronously.
  2. Flush: every output is on its topic.
  3. Commit: the batch's state changes (counters, key-value state, the open windows) and, under
     EFFECTIVELY_ONCE, the input partitions' positions, in one SQL transaction
     (checkpoints.function_store).
  4. Acknowledge the batch's inputs.
A crash anywhere redelivers what was not acknowledged. ATLEAST_ONCE (a Shared subscription)
then processes it again. EFFECTIVELY_ONCE (a Failover subscription: each input partition in
order by one instance) skips a message at or below its partition's committed position (crash
between 3 and 4), and a message processed again (crash between 1 and 3) republishes its output
with the same sequence id from a producer named after the input partition, which the broker
drops as a duplicate (windows: the window's sequence from a producer per instance). Counters and
state therefore count each message once; `context.publish` to other topics is at least once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any
from zlib import crc32

import pulsar
import ray

from checkpoints.function_store import FunctionStore, Position, StateChanges
from mlplatform.connectors.pulsar_io import make_client, receive_batch
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.stream.actor_pool import closing, drive
from mlplatform.inference.stream.function_context import SERDE, RayContext, user_metrics
from mlplatform.inference.stream.function_spec import FunctionSpec, load_function
from mlplatform.inference.stream.function_windows import Window, Windower, WindowRecord
from mlplatform.inference.stream.partitions import sequence_id
from mlplatform.registry import model_registry
from mlplatform.settings import Settings

logger = logging.getLogger(__name__)
INPUT_TOPIC, INPUT_ID = "__pfn_input_topic__", "__pfn_input_msg_id__"  # Pulsar's own names
LATEST_EXCEPTIONS = 10


@dataclass(frozen=True)
class FunctionRunResult:
    consumed: int
    processed: int
    failed: int
    metrics: dict[str, float]
    seconds: float


def champion_user_config(s: Settings, version: int | None = None) -> dict[str, str]:
    """User config that tells a function where the (verified) model and its metadata are."""
    row = model_registry.get_version(s, version)
    return {
        "model_name": row.model_name or s.resolved_model_name,
        "model_path": row.artifact_path,
        "model_sha256": row.sha256,
        "model_version": str(row.version),
        "feature_order": ",".join(row.feature_order),
        "label_names": ",".join(row.label_names),
        # The dataset spec's ranges, the rule every entry checks: name:min:max,...
        "feature_ranges": ",".join(
            f"{name}:{low!r}:{high!r}" for name, (low, high) in s.dataset_spec.ranges.items()
        ),
    }


def position(message: pulsar.Message) -> Position:
    mid = message.message_id()
    return mid.ledger_id(), mid.entry_id(), max(mid.batch_index(), 0)


def encoded_id(message: pulsar.Message) -> str:
    return base64.b64encode(message.message_id().serialize()).decode()


def topic_tag(topic: str) -> str:
    """A short stable name for an input partition, part of its output producer's name."""
    return f"{crc32(topic.encode()):08x}"


def own_partitions(
    client: pulsar.Client, inputs: tuple[str, ...], instance_id: int, parallelism: int
) -> list[str]:
    """Instance `instance_id`'s share of the inputs' partitions (all of them, one by one)."""
    partitions = [p for topic in inputs for p in client.get_topic_partitions(topic)]
    if parallelism > len(partitions):
        raise ValueError(
            f"--parallelism {parallelism} under EFFECTIVELY_ONCE needs at least as many input "
            f"partitions; the inputs have {len(partitions)}"
        )
    return partitions[instance_id::parallelism]


class FunctionInstance:
    """One instance of a function: its consumer, context, state and statistics.

    As a Ray actor (`FunctionActor`) it is polled by `run_function`, or, created with `forever`,
    runs its own loop until killed, restarted by Ray after a crash."""

    def __init__(
        self,
        s: Settings,
        spec: FunctionSpec,
        instance_id: int,
        batch: int = 100,
        forever: bool = False,
    ) -> None:
        self.s, self.spec, self.instance_id, self.batch = s, spec, instance_id, batch
        self.function = load_function(spec.py, spec.classname)
        self.store = FunctionStore(s.resolved_database_url)
        self.client = make_client(s)
        self.consumer = self._subscribe()
        self.context = RayContext(s, spec, instance_id, self.client, self.store)
        self.positions = self.store.positions(spec.fqfn) if spec.effectively_once else {}
        self.window_key = f"__window__/{instance_id}"
        self.generation = self.store.created_ms(spec.fqfn)
        self.windower: Windower | None = None
        if spec.window is not None:
            saved = self.store.state(spec.fqfn, self.window_key)
            self.windower = (
                Windower(spec.window)
                if saved is None
                else Windower.restore(spec.window, json.loads(saved))
            )
        self.counts = {"received": 0, "processed": 0, "user_exceptions": 0, "system_exceptions": 0}
        self.latency_ms = {"sum": 0.0, "count": 0}
        self.last_invocation_ms = 0
        self.latest_exceptions: deque[dict[str, Any]] = deque(maxlen=LATEST_EXCEPTIONS)
        self.stopping = threading.Event()
        self.loop: threading.Thread | None = None
        if forever:
            starts = StateChanges(increments={f"__starts__/{instance_id}": 1})
            self.store.commit(spec.fqfn, starts)
            self.loop = threading.Thread(target=self._run_forever, daemon=True)
            self.loop.start()

    def _subscribe(self) -> pulsar.Consumer:
        spec = self.spec
        topics: Any = re.compile(spec.topics_pattern) if spec.topics_pattern else list(spec.inputs)
        if spec.effectively_once and spec.inputs:
            # Each input partition read by one instance only, in order, and never moved to
            # another: its named output producer is never open in two places.
            topics = own_partitions(self.client, spec.inputs, self.instance_id, spec.parallelism)
        options: dict[str, Any] = {}
        if spec.timeout_ms:
            options["unacked_messages_timeout_ms"] = max(spec.timeout_ms, 10_000)
        deadline = time.monotonic() + 30
        while True:  # a restarted instance may race the broker noticing its predecessor is gone
            try:
                return self.client.subscribe(
                    topics,
                    spec.subscription,
                    consumer_type=pulsar.ConsumerType.Failover
                    if spec.effectively_once
                    else pulsar.ConsumerType.Shared,
                    consumer_name=f"{spec.fqfn}:{self.instance_id}",
                    initial_position=pulsar.InitialPosition.Earliest,
                    receiver_queue_size=self.batch,
                    **options,
                )
            except pulsar.PulsarException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _producer(self, topic: str, name: str) -> pulsar.Producer:
        """Under EFFECTIVELY_ONCE one named producer per input partition (or window sequence):
        the broker de-duplicates per name; otherwise the topic's one producer."""
        if not self.spec.effectively_once:
            return self.context.producer(topic)
        key = f"{topic}|{name}"
        if key not in self.context.producers:
            self.context.producers[key] = self.client.create_producer(
                topic, block_if_queue_full=True, producer_name=name
            )
        return self.context.producers[key]

    def _send(
        self, topic: str, name: str, value: Any, seq: int, properties: dict[str, str]
    ) -> None:
        ids = {"sequence_id": seq} if self.spec.effectively_once else {}
        self._producer(topic, name).send_async(
            SERDE.serialize(value), self.context._sent, properties=properties, **ids
        )

    def _call(self, value: Any) -> Any:
        """The user's code, tried up to 1 + max_message_retries times; raises the last error."""
        for attempt in range(self.spec.max_message_retries + 1):
            started = time.perf_counter()
            try:
                if hasattr(self.function, "process"):
                    result = self.function.process(value, self.context)
                else:
                    result = self.function(value)
            except Exception as error:
                self.counts["user_exceptions"] += 1
                self.latest_exceptions.append(
                    {"exceptionString": repr(error)[:500], "timestampMs": int(time.time() * 1000)}
                )
                self.context.logger.warning("process() failed (attempt %d): %r", attempt + 1, error)
                if attempt == self.spec.max_message_retries:
                    raise
            else:
                self.latency_ms["sum"] += (time.perf_counter() - started) * 1000
                self.latency_ms["count"] += 1
                self.last_invocation_ms = int(time.time() * 1000)
                return result
        raise AssertionError("unreachable")

    def _dead_letter(self, message: pulsar.Message, error: Exception) -> None:
        topic = message.topic_name()
        properties = {**message.properties(), INPUT_TOPIC: topic, INPUT_ID: encoded_id(message)}
        properties["__pfn_error__"] = repr(error)[:500]
        name = f"{self.spec.name}-dlq-{topic_tag(topic)}"
        self._send(
            self.spec.dead_letters,
            name,
            message.data(),
            sequence_id(message.message_id()),
            properties,
        )

    def _process_message(self, message: pulsar.Message) -> bool:
        self.context.message = message
        topic = message.topic_name()
        try:
            result = self._call(SERDE.deserialize(message.data()))
        except Exception as error:
            self._dead_letter(message, error)
            return False
        if result is not None and self.spec.output:
            properties = {INPUT_TOPIC: topic, INPUT_ID: encoded_id(message)}
            name = f"{self.spec.name}-{topic_tag(topic)}"
            self._send(
                self.spec.output, name, result, sequence_id(message.message_id()), properties
            )
        return True

    def _record(self, message: pulsar.Message) -> WindowRecord:
        event = message.event_timestamp() or None
        stamp = (
            event
            if self.spec.window_timestamp == "event" and event
            else message.publish_timestamp()
        )
        return WindowRecord(
            value=SERDE.deserialize(message.data()),
            message_id=encoded_id(message),
            topic=message.topic_name(),
            timestamp_ms=stamp,
            event_time_ms=event,
            key=message.partition_key() or None,
            properties=dict(message.properties()),
        )

    def _process_window(self, window: Window) -> bool:
        self.context.message = None
        self.context.window = window  # type: ignore[attr-defined]
        try:
            result = self._call(list(window.records))
        except Exception as error:
            self.context.logger.error(
                "window [%d, %d) failed for good: %r", window.start, window.end, error
            )
            return False
        if result is not None and self.spec.output:
            properties = {"__window_start__": str(window.start), "__window_end__": str(window.end)}
            name = f"{self.spec.name}-window-{self.instance_id}-{self.generation}"
            self._send(self.spec.output, name, result, window.sequence, properties)
        return True

    def poll(self, limit: int) -> tuple[int, int, int]:
        """One batch, through the delivery protocol above: (consumed, processed, failed)."""
        # Natural batching, as the stream consumers: what has arrived when the first message
        # does, never waiting for more (a message's latency is not the batch window's).
        messages = receive_batch(
            self.consumer,
            min(limit, self.batch),
            self.s.stream_batch_wait_ms,
            self.s.stream_batch_linger_ms,
        )
        self.counts["received"] += len(messages)
        processed = failed = 0
        moved: dict[str, Position] = {}
        windows: list[Window] = []
        for message in messages:
            topic, here = message.topic_name(), position(message)
            if self.spec.effectively_once and here <= self.positions.get(topic, (-1, -1, -1)):
                continue  # committed before a crash, acknowledged only now
            if self.windower is not None:
                windows += self.windower.add(self._record(message))
                processed += 1
            elif self._process_message(message):
                processed += 1
            else:
                failed += 1
            moved[topic] = here
        if self.windower is not None:
            windows += self.windower.advance(int(time.time() * 1000))
            late = self.windower.take_late()
            if late:
                logger.warning("%d late records dropped from %s", len(late), self.spec.fqfn)
            for window in windows:
                if not self._process_window(window):
                    failed += 1
        self.context.flush()
        changes = self.context.take_changes()
        if self.windower is not None and (messages or windows):
            changes.puts[self.window_key] = json.dumps(self.windower.snapshot()).encode()
        if self.spec.effectively_once:
            changes.positions = moved
        self.store.commit(self.spec.fqfn, changes)
        self.positions.update(moved)
        for message in messages:
            self.consumer.acknowledge(message)
        self.counts["processed"] += processed
        return len(messages), processed, failed

    def _run_forever(self) -> None:
        try:
            while not self.stopping.is_set():
                self.poll(self.batch)
        except BaseException:
            # Crash-only: Ray restarts the actor, the broker redelivers what was not acknowledged.
            logger.exception("instance %d of %s crashed", self.instance_id, self.spec.fqfn)
            os._exit(1)

    def stats(self) -> dict[str, Any]:
        count = self.latency_ms["count"]
        return {
            "instanceId": self.instance_id,
            "running": self.loop is None or self.loop.is_alive(),
            "workerId": f"{socket.gethostname()}:{os.getpid()}",
            "numReceived": self.counts["received"],
            "numSuccessfullyProcessed": self.counts["processed"],
            "numUserExceptions": self.counts["user_exceptions"],
            "numSystemExceptions": self.counts["system_exceptions"],
            "latestUserExceptions": list(self.latest_exceptions),
            "averageLatency": self.latency_ms["sum"] / count if count else 0.0,
            "lastInvocationTime": self.last_invocation_ms,
            "userMetrics": user_metrics(self.context.metrics),
        }

    def metrics(self) -> dict[str, list[float]]:
        return dict(self.context.metrics)

    def close(self) -> None:
        self.stopping.set()
        if self.loop is not None and self.loop is not threading.current_thread():
            self.loop.join(timeout=30)
        self.context.flush()
        self.consumer.close()
        self.client.close()


FunctionActor = ray.remote(max_task_retries=0)(FunctionInstance)


def run_function(
    s: Settings,
    spec: FunctionSpec,
    parallelism: int = 1,
    max_messages: int | None = None,
    timeout_s: float = 60.0,
    batch: int = 100,
) -> FunctionRunResult:
    """Run `parallelism` instances until max_messages are processed or timeout_s passes."""
    started = time.monotonic()
    load_function(spec.py, spec.classname)  # a broken file fails here, with its own error
    connect(s)
    instances = [
        FunctionActor.options(num_cpus=s.stream_actor_cpus, max_restarts=3).remote(
            s, spec, i, batch
        )
        for i in range(parallelism)
    ]
    with closing(instances):
        run = drive(instances, batch, max_messages, timeout_s)
        totals: dict[str, float] = defaultdict(float)
        for metrics in ray.get([i.metrics.remote() for i in instances]):
            for name, values in metrics.items():
                totals[name] += sum(values)
    return FunctionRunResult(
        run.consumed, run.done, run.failed, dict(totals), time.monotonic() - started
    )
