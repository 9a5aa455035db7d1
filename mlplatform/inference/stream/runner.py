"""Stream inference: a pool of Ray actors consumes the features topic, predicts, and writes every
prediction once to the predictions topic and once to an Iceberg table.

Delivery protocol (effectively once, the default `stream_subscription_type=failover`):

1. Actor i owns the features topic's partitions p with p % actors == i and reads them on a
   Failover subscription, so each partition is read by one consumer, in order. Ray restarts a
   killed actor with the same index, so the same partitions come back to it.
2. A micro-batch is up to `stream_batch_max` messages or `stream_batch_wait_ms` (at most
   `stream_batch_linger_ms` after its first message: 0 takes what is there). A message that
   is not a valid feature row is negatively acknowledged; on its `stream_max_redeliveries`-th
   delivery it goes to the dead-letter topic with its reason in the `reason` property, and is
   acknowledged.
3. Results go to the predictions topic through one producer per input partition, named after
   it, in batches of at most `stream_results_batch_bytes` (one per micro-batch at the defaults;
   one broker entry each) whose sequence id is the highest input position in the batch. A
   result at or below the producer's last persisted sequence id is not sent again, and the
   broker's de-duplication drops a batch that raced a crash.
4. At the end of each poll (at most `stream_poll_s`), once its results are on the topic, the
   actor hands them, each with its producer and sequence id, to the pool's one
   `StreamCommitter`, which appends everything handed in to Iceberg every
   `stream_commit_interval_s` in one snapshot. It keeps every producer's highest sequence id
   (`mlp.hwm.<producer>` in each snapshot) and drops a result at or below it: one already in
   Iceberg, or already handed in by an earlier incarnation of the actor.
5. Inputs are acknowledged only once their results are in Iceberg, hence already on the topic;
   the actor goes on predicting meanwhile. That is one cumulative acknowledgement per partition,
   unless an input waits for redelivery (a cumulative one would acknowledge it too).
6. Any other error fails the poll and the driver restarts the actor (crash-only recovery): the
   broker redelivers what was not acknowledged, in order, and steps 3 and 4 drop what was written.
   A failed commit restarts the committer and, through their failed hand-offs, the actors.

`key_shared` and `shared` spread one partition over several actors, for more consumers than
partitions. Their delivery order is per key at best, which positions cannot be de-duplicated
by, so they are at least once: a crash can repeat a result (same key, same prediction).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import pulsar
import ray
from ray.exceptions import RayActorError

from mlplatform.connectors.iceberg_tables import ensure_tables
from mlplatform.connectors.niceness import set_niceness
from mlplatform.connectors.pulsar_io import make_client, receive_batch, topic_partitions
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.fast_predict import compile_model
from mlplatform.inference.stream.actor_pool import closing, drive
from mlplatform.inference.stream.committer import Result, StreamCommitter
from mlplatform.registry import model_registry
from mlplatform.registry.model_registry import ModelRef
from mlplatform.settings import Settings

logger = logging.getLogger(__name__)

# A poll handles at most this many micro-batches (and at most stream_poll_s).
BATCHES_PER_POLL = 50
# Hand-offs not yet committed, at most: a committer that falls behind slows the actors down.
MAX_HAND_OFFS = 64
# The results producers' batching timer, never reached: `_send_batches` flushes each batch.
BATCH_TIMER_OFF_MS = 24 * 3600 * 1000


class InvalidMessage(ValueError):
    """A features message that cannot be predicted; the text is the dead-letter reason."""


@dataclass(frozen=True)
class StreamResult:
    consumed: int
    published: int
    failed: int
    model_version: int
    seconds: float
    actor_restarts: int = 0


def parse_features(payload: bytes, key: str, feature_order: tuple[str, ...]) -> tuple[str, list]:
    """(key, features in the model's order) of one JSON message, or InvalidMessage with why."""
    try:
        row = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidMessage(f"not_utf8: byte {error.start}") from None
    except json.JSONDecodeError as error:
        raise InvalidMessage(f"not_json: {error.msg} at char {error.pos}") from None
    if not isinstance(row, dict):
        raise InvalidMessage(f"not_object: a JSON {type(row).__name__}")
    if row.get(key) in (None, ""):
        raise InvalidMessage(f"missing_key: {key}")
    values = []
    for column in feature_order:
        if column not in row:
            raise InvalidMessage(f"missing_feature: {column}")
        value = row[column]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidMessage(f"not_number: {column}={value!r}")
        if not math.isfinite(value):
            raise InvalidMessage(f"not_finite: {column}={value!r}")
        values.append(float(value))
    return str(row[key]), values


def predict_rows(
    model: object, ref: ModelRef, key: str, keys: list[str], features: list[list[float]]
) -> list[dict[str, object]]:
    """Predictions for parsed rows, in input order."""
    probabilities = model.predict_proba(np.asarray(features, dtype=np.float64))  # type: ignore[attr-defined]
    return [
        {
            key: k,
            "prediction": int(p.argmax()),
            "label_name": ref.label_names[int(p.argmax())],
            "probabilities": [float(v) for v in p],
            "model_version": ref.version,
        }
        for k, p in zip(keys, probabilities, strict=True)
    ]


def sequence_id(message_id: pulsar.MessageId) -> int:
    """A message's position in its partition as one increasing integer (ledger, entry, batch)."""
    ledger, entry, index = message_id.ledger_id(), message_id.entry_id(), message_id.batch_index()
    if not (0 <= ledger < 1 << 29 and 0 <= entry < 1 << 24 and index < 1 << 10):
        raise ValueError(f"message id {message_id} is outside the sequence-id encoding")
    return (ledger << 34) | (entry << 10) | max(index, 0)


def batch_bounds(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of items of these sizes, each at most `limit` in all (an
    item larger than that on its own)."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < len(sizes):
        end, total = start + 1, sizes[start]
        while end < len(sizes) and total + sizes[end] <= limit:
            total += sizes[end]
            end += 1
        bounds.append((start, end))
        start = end
    return bounds


def partition_of(topic: str) -> int:
    """The partition index in a partition's topic name (`...-partition-3` -> 3), else 0."""
    _, marker, index = topic.rpartition("-partition-")
    return int(index) if marker and index.isdigit() else 0


def owned_partitions(index: int, actors: int, partitions: int) -> list[int]:
    """The partitions actor `index` of `actors` reads in failover mode."""
    if actors > max(partitions, 1):
        raise ValueError(
            f"{actors} stream actors but the features topic has {partitions} partitions: in "
            "failover mode each actor owns whole partitions; lower MLP_STREAM_ACTORS, add "
            "partitions, or use MLP_STREAM_SUBSCRIPTION_TYPE=key_shared (at least once)"
        )
    return [p for p in range(max(partitions, 1)) if p % actors == index]


class _Parsed(NamedTuple):
    """A valid features message: its partition, position, key and features in model order."""

    topic: str
    seq: int
    message: pulsar.Message
    key: str
    features: list[float]


@dataclass
class _Pending:
    """Results not yet handed to the committer, and the inputs to acknowledge once committed."""

    rows: list[Result] = field(default_factory=list)
    messages: list[pulsar.Message] = field(default_factory=list)
    last: dict[str, pulsar.Message] = field(default_factory=dict)  # partition -> its newest


@ray.remote(max_restarts=-1, max_task_retries=0)
class StreamConsumer:
    """One consumer of the features topic; predicts and writes in micro-batches."""

    def __init__(
        self,
        settings: dict,
        ref: ModelRef,
        index: int,
        partitions: list[int] | None,
        committer: ray.actor.ActorHandle,
        pinned: bool = False,
    ) -> None:
        self.s = Settings(**settings)
        set_niceness(self.s.latency_actor_niceness)
        self.ref, self.pinned, self.index = ref, pinned, index
        self.model = compile_model(model_registry.load_model(ref))
        self.checked_at = time.monotonic()
        self.dedup = self.s.stream_subscription_type == "failover"
        self.client = make_client(self.s)
        self.consumer = self._subscribe(partitions)
        self.producers: dict[str, pulsar.Producer] = {}
        self.producer_names: dict[str, str] = {}  # input partition topic -> producer name
        self.sent: dict[str, int] = {}
        self.send_errors: list[str] = []  # filled by the client's callback threads
        self.dead_letters: pulsar.Producer | None = None
        self.deliveries: dict[str, int] = {}  # message id -> deliveries that failed
        self.committer = committer
        self.pending = _Pending()
        # Hand-offs to the committer, oldest first: (its call, the inputs to acknowledge after).
        self.handed: deque[tuple[ray.ObjectRef, _Pending]] = deque()
        self.committed = 0
        # A full collection walks every object of Ray, pyarrow, pyiceberg and scikit-learn:
        # 300-400 ms stalls of the loop here. What exists now lives as long as the actor.
        gc.collect()
        gc.freeze()

    def _subscribe(self, partitions: list[int] | None) -> pulsar.Consumer:
        kind = self.s.stream_subscription_type
        topics: str | list[str] = self.s.features_topic
        if partitions is not None:  # failover: this actor's own partitions, each in order
            topics = [f"{self.s.features_topic}-partition-{p}" for p in partitions]
        types = {
            "failover": pulsar.ConsumerType.Failover,
            "key_shared": pulsar.ConsumerType.KeyShared,
            "shared": pulsar.ConsumerType.Shared,
        }
        deadline = time.monotonic() + 30
        while True:  # a restarted actor may race the broker noticing its predecessor is gone
            try:
                return self.client.subscribe(
                    topics,
                    self.s.stream_subscription,
                    consumer_type=types[kind],
                    initial_position=pulsar.InitialPosition.Earliest,
                    consumer_name=f"stream-inference-{self.index}",
                    receiver_queue_size=self.s.stream_receiver_queue,
                    negative_ack_redelivery_delay_ms=self.s.stream_nack_delay_ms,
                )
            except pulsar.PulsarException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _producer(self, topic: str) -> str:
        """The name of the results' producer for an input partition (`topic`), created once."""
        name = self.producer_names.get(topic)
        if name is None:
            name = f"{self.s.stream_subscription}-p{partition_of(topic)}"
            if not self.dedup:
                name = f"{name}-{self.index}"
            self.producer_names[topic] = name
        if name not in self.producers:
            # A batch is exactly what `_send_batches` sends before its flush: its size limits
            # are never reached first, and its timer never fires.
            self.producers[name] = self.client.create_producer(
                self.s.predictions_topic,
                producer_name=name if self.dedup else None,
                batching_enabled=True,
                batching_max_messages=self.s.stream_batch_max + 1,
                batching_max_allowed_size_in_bytes=2 * self.s.stream_results_batch_bytes,
                batching_max_publish_delay_ms=BATCH_TIMER_OFF_MS,
                block_if_queue_full=True,
            )
            self.sent[name] = self.producers[name].last_sequence_id() if self.dedup else -1
        return name

    def refresh_model(self) -> None:
        """Switch to a newly promoted (or rolled back) champion between micro-batches."""
        if self.pinned or time.monotonic() - self.checked_at < self.s.model_refresh_s:
            return
        self.checked_at = time.monotonic()
        champion = model_registry.get_version(self.s)
        if champion.version != self.ref.version:
            ref = model_registry.model_ref(champion)
            self.model, self.ref = compile_model(model_registry.load_model(ref)), ref
            logger.info("switched to model version %d", ref.version)

    def _reject(self, message: pulsar.Message, reason: str) -> None:
        """Retry later, or park the message with its reason once it was delivered K times.

        Failover subscriptions carry no redelivery count, so the actor counts deliveries too.
        """
        key = str(message.message_id())
        self.deliveries[key] = deliveries = max(
            self.deliveries.get(key, 0) + 1, message.redelivery_count() + 1
        )
        if deliveries < self.s.stream_max_redeliveries:
            self.consumer.negative_acknowledge(message)
            return
        del self.deliveries[key]
        if self.dead_letters is None:
            self.dead_letters = self.client.create_producer(self.s.dead_letter_topic)
        self.dead_letters.send(
            message.data(),
            properties={
                "reason": reason,
                "source_topic": message.topic_name(),
                "source_message_id": str(message.message_id()),
                "deliveries": str(deliveries),
            },
        )
        self.consumer.acknowledge(message)
        logger.warning("dead-lettered %s: %s", message.message_id(), reason)

    def poll(self, limit: int) -> tuple[int, int, int]:
        """Micro-batches of at most `limit` messages in all, for at most `stream_poll_s` or
        until one finds nothing: (consumed, published, rejected).

        Many micro-batches per call keep the driver's round trip off each message's path. A
        redelivered message whose result an earlier incarnation already published is written
        where it is missing but not counted again. A crash before the poll returns loses the
        count (never the results), and a bounded run then ends once the stream runs dry.
        """
        started = time.monotonic()
        consumed = published = rejected = 0
        while consumed < limit:
            c, p, r = self._micro_batch(min(limit - consumed, self.s.stream_batch_max))
            consumed, published, rejected = consumed + c, published + p, rejected + r
            if c == 0 or time.monotonic() - started >= self.s.stream_poll_s:
                break
        self._hand_off()
        return consumed, published, rejected

    def _micro_batch(self, limit: int) -> tuple[int, int, int]:
        self.refresh_model()
        messages = receive_batch(
            self.consumer, limit, self.s.stream_batch_wait_ms, self.s.stream_batch_linger_ms
        )
        # (topic, position, message), each read once; position order per partition keeps every
        # producer's sequence ids increasing.
        entries = sorted(
            (
                (m.topic_name(), sequence_id(m.message_id()) if self.dedup else -1, m)
                for m in messages
            ),
            key=lambda entry: entry[:2],
        )
        good: list[_Parsed] = []
        for topic, seq, message in entries:
            try:
                key, features = parse_features(
                    message.data(), self.s.key_column, self.ref.feature_order
                )
                good.append(_Parsed(topic, seq, message, key, features))
            except InvalidMessage as error:
                self._reject(message, str(error))
        published = self._publish(good) if good else 0
        return len(messages), published, len(messages) - len(good)

    def _flush(self) -> None:
        """Wait until every result sent is on the topic; raise if any send failed."""
        for producer in self.producers.values():
            producer.flush()
        if self.send_errors:
            errors, self.send_errors = self.send_errors, []
            raise RuntimeError(f"publishing {len(errors)} predictions failed: {errors[:3]}")

    def _publish(self, good: list[_Parsed]) -> int:
        """Predict and publish; the number of results sent for the first time."""
        results = predict_rows(
            self.model,
            self.ref,
            self.s.key_column,
            [p.key for p in good],
            [p.features for p in good],
        )
        predicted_at = datetime.now(UTC).replace(tzinfo=None).isoformat()
        to_send: dict[str, list[tuple[bytes, str, int]]] = {}  # producer -> (payload, key, seq)
        for parsed, row in zip(good, results, strict=True):
            name = self._producer(parsed.topic)
            row["message_id"] = str(parsed.message.message_id())
            row["predicted_at"] = predicted_at
            payload = json.dumps(row).encode()
            if not self.dedup or parsed.seq > self.sent[name]:
                to_send.setdefault(name, []).append((payload, parsed.key, parsed.seq))
            self.pending.rows.append(Result(name if self.dedup else None, parsed.seq, payload))
            self.pending.messages.append(parsed.message)
            self.pending.last[parsed.topic] = parsed.message
        for name, results_of in to_send.items():
            self._send_batches(name, results_of)
        # The next micro-batch starts while these are on their way; the hand-off at the poll's
        # end waits for them (inputs are acknowledged only after a commit).
        return sum(len(r) for r in to_send.values())

    def _send_batches(self, name: str, results: list[tuple[bytes, str, int]]) -> None:
        """Publish one input partition's results, in position order, in batches of at most
        `stream_results_batch_bytes`, each sent as soon as it is complete.

        The broker de-duplicates a batch by the sequence id of its metadata, which the client
        takes from the batch's first message (C++ client 4.2; later ones take the last). So the
        first message carries the batch's highest position: a batch is on the topic exactly when
        the producer's last sequence id reaches it, wherever a crash cut the stream."""
        producer = self.producers[name]
        sizes = [len(payload) for payload, _, _ in results]
        for start, end in batch_bounds(sizes, self.s.stream_results_batch_bytes):
            top = results[end - 1][2]
            for i in range(start, end):
                payload, key, seq = results[i]
                ids = {"sequence_id": top if i == start else seq} if self.dedup else {}
                producer.send_async(payload, self._sent, partition_key=key, **ids)
            producer._producer.flush_async(self._flushed)  # the wrapper has no flush_async
            self.sent[name] = max(self.sent[name], top)

    def _sent(self, result: pulsar.Result, _message_id: object) -> None:
        if result != pulsar.Result.Ok:
            self.send_errors.append(str(result))

    def _flushed(self, result: pulsar.Result) -> None:
        if result != pulsar.Result.Ok:
            self.send_errors.append(f"flush: {result}")

    def _hand_off(self, now: bool = False) -> None:
        """Give the committer the results, once every one is on the topic; `now`: have it
        commit without waiting for its interval."""
        self._flush()
        pending, self.pending = self.pending, _Pending()
        if pending.messages or now:
            call = self.committer.add.remote(pending.rows, now)
            self.handed.append((call, pending))
        self._acknowledge_committed(wait_for=len(self.handed) - MAX_HAND_OFFS)

    def _acknowledge_committed(self, wait_for: int = 0) -> None:
        """Acknowledge the inputs whose results are committed (hand-offs finish in order),
        waiting for the oldest `wait_for` hand-offs; a failed hand-off raises here."""
        while self.handed:
            call, inputs = self.handed[0]
            if wait_for <= 0 and not ray.wait([call], timeout=0)[0]:
                return
            wait_for -= 1
            try:
                appended = ray.get(call)
            except RayActorError as error:  # a plain error, so the driver restarts this actor
                raise RuntimeError(f"committing this actor's results failed: {error}") from None
            self._acknowledge(inputs)
            self.committed += appended
            self.handed.popleft()

    def _acknowledge(self, inputs: _Pending) -> None:
        """One cumulative acknowledgement per partition (a failover subscription reads each
        partition in order, and every earlier input is committed or parked) unless an input
        waits for redelivery, which a cumulative one would acknowledge too; else each input."""
        if self.dedup and not self.deliveries:
            for message in inputs.last.values():
                self.consumer.acknowledge_cumulative(message)
            return
        for message in inputs.messages:
            self.consumer.acknowledge(message)

    def close(self) -> int:
        """Commit what is buffered, close the clients; the rows this actor wrote to Iceberg."""
        self._hand_off(now=True)
        self._acknowledge_committed(wait_for=len(self.handed))
        for producer in self.producers.values():
            producer.close()
        self.consumer.close()
        self.client.close()
        return self.committed


def run_stream_inference(
    s: Settings,
    max_messages: int | None = None,
    timeout_s: float | None = 60.0,
    model_version: int | None = None,
) -> StreamResult:
    """Consume until max_messages are accepted or timeout_s passes (None: until cancelled)."""
    started = time.monotonic()
    ref = model_registry.model_ref(model_registry.get_version(s, model_version))
    ensure_tables(s)
    connect(s)
    owned: list[list[int] | None] = [None] * s.stream_actors
    if s.stream_subscription_type == "failover":
        partitions = topic_partitions(s, s.features_topic)
        owned = [owned_partitions(i, s.stream_actors, partitions) for i in range(s.stream_actors)]
        if partitions == 0:  # a non-partitioned topic is read whole by the one actor
            owned = [None]
    settings = s.model_dump(mode="json")
    # Mostly idle, and at Ray's niceness (15): behind the consumers when both want a core.
    committer = StreamCommitter.options(num_cpus=0).remote(settings, s.stream_predictions_table)
    try:
        actors = [
            StreamConsumer.options(num_cpus=s.stream_actor_cpus).remote(
                settings, ref, i, mine, committer, model_version is not None
            )
            for i, mine in enumerate(owned)
        ]
        with closing(actors) as pool:
            totals = drive(pool, s.stream_batch_max * BATCHES_PER_POLL, max_messages, timeout_s)
    finally:
        ray.kill(committer)
    return StreamResult(
        totals.consumed,
        totals.done,
        totals.failed,
        ref.version,
        time.monotonic() - started,
        totals.restarts,
    )
