"""The stream actors: each consumes the features topic, predicts, and writes every prediction once
to the predictions topic and once (through the pool's one StreamCommitter) to an Iceberg table.
`runner.run_stream_inference` starts and drives the pool.

Delivery protocol (effectively once, the default `stream_subscription_type=failover`):

1. Actor i owns the features topic's partitions p with p % actors == i and reads them on a
   Failover subscription, so each partition is read by one consumer, in order. It starts
   reading when the pool gives it index i (`take`). When it is lost, a spare actor (loaded,
   reading nothing) takes index i at once, and Ray's restart of the lost one is the next
   spare; a partition's results producer (3.) is named after it, and the broker refuses a
   second producer of that name, so one actor at a time writes a partition's results.
2. A micro-batch is up to `stream_batch_max` messages or `stream_batch_wait_ms` (at most
   `stream_batch_linger_ms` after its first message: 0 takes what is there). A message that
   is not a valid feature row (`inference.features.parse_message`) is negatively acknowledged;
   on its `stream_max_redeliveries`-th delivery it goes to the dead-letter topic with its reason
   in the `reason` property, and is acknowledged (`dead_letters`).
   A valid message that the Flink job published again (its at-least-once delivery repeats, after
   a failure, what it had published since its last checkpoint) is acknowledged without a
   result: it carries the raw event's partition and position (`partitions.source_position`),
   and a partition's messages come in the raw events' order, so a message whose raw position is
   at or below the highest this partition has had is a repeat. That highest position starts
   from the committed results' (the committer's source marks) and follows each message.
3. Results go to the predictions topic through one producer per input partition, named after
   it, in batches of at most `stream_results_batch_bytes` (one per micro-batch at the defaults;
   one broker entry each) whose sequence id is the highest input position in the batch. A
   result at or below the producer's last persisted sequence id is not sent again, and the
   broker's de-duplication drops a batch that raced a crash. A result's event time is its
   input's (the raw event's publish time, set by the Flink job), so its publish time minus its
   event time is the raw event -> prediction latency (`ops.live_view`).
4. At the end of each poll (at most `stream_poll_s`), once its results are on the topic, the
   actor hands them, each with its producer and sequence id, to the pool's one
   `StreamCommitter`, numbered (the committer takes an actor's hand-offs in their order), which
   appends everything handed in to Iceberg every `stream_commit_interval_s` in one snapshot. It
   keeps every producer's highest sequence id (`mlp.hwm.<producer>` in each snapshot) and
   drops a result at or below it: one already in Iceberg, or already handed in by an earlier
   incarnation of the actor.
5. Inputs are acknowledged only once their results are in Iceberg, hence already on the topic;
   the actor goes on predicting meanwhile. That is one cumulative acknowledgement per partition,
   unless an input waits for redelivery (a cumulative one would acknowledge it too).
6. Any other error fails the poll and the driver restarts the actor (crash-only recovery): a
   spare takes its index, the broker redelivers what was not acknowledged, in order, and steps
   2 to 4 drop what was written (each starts from what the broker and the table hold, never
   from the lost actor's memory).
   A failed commit restarts the committer and, through their failed hand-offs, the actors.

`key_shared` and `shared` spread one partition over several actors, for more consumers than
partitions. Their delivery order is per key at best, which positions cannot be de-duplicated
by, so they are at least once: a crash can repeat a result (same key, same prediction).

Each result is the one prediction record (`inference.predictions`) with the input's
`message_id` and `predicted_at`. The actor follows the champion between micro-batches
(`registry.champion.ChampionFollower`) unless the run pins a version.
"""

from __future__ import annotations

import gc
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import pulsar
import ray
from ray.exceptions import RayActorError

from mlplatform.connectors.niceness import set_niceness
from mlplatform.connectors.pulsar_io import make_client, receive_batch
from mlplatform.dataset.prediction_record import MESSAGE_ID, PREDICTED_AT
from mlplatform.inference.fast_predict import load_compiled
from mlplatform.inference.features import InvalidFeatures, parse_message
from mlplatform.inference.predictions import predictions
from mlplatform.inference.stream.committer import Result
from mlplatform.inference.stream.dead_letters import DeadLetters
from mlplatform.inference.stream.partitions import (
    SourceMarks,
    batch_bounds,
    partition_of,
    sequence_id,
    source_position,
    subscribe,
)
from mlplatform.inference.user_predictor import model_loader
from mlplatform.registry.champion import ChampionFollower, LoadedModel
from mlplatform.registry.model_ref import ModelRef
from mlplatform.settings import Settings

logger = logging.getLogger(__name__)

# Hand-offs not yet committed, at most: a committer that falls behind slows the actors down.
MAX_HAND_OFFS = 64
# The results producers' batching timer, never reached: `_send_batches` flushes each batch.
BATCH_TIMER_OFF_MS = 24 * 3600 * 1000
PRODUCER_WAIT_S = 30.0


def predict_rows(
    model: Any, ref: ModelRef, key: str, keys: list[str], features: list[list[float]]
) -> list[dict[str, Any]]:
    """The prediction records of parsed rows, in input order."""
    probabilities = model.predict_proba(np.asarray(features, dtype=np.float64))
    found = predictions(probabilities, model.classes_, ref.label_names, ref.version)
    return [p.record(key, k) for k, p in zip(keys, found, strict=True)]


class _Parsed(NamedTuple):
    """A valid features message: its partition, position, key and features in model order, and
    the raw event's partition and position it came from (None: it carries none)."""

    topic: str
    seq: int
    message: pulsar.Message
    key: str
    features: list[float]
    source: tuple[str, int] | None


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
        self, s: Settings, model_version: int | None, committer: ray.actor.ActorHandle
    ) -> None:
        """Everything but the subscription: the model, the client, and what they import. A
        new actor (and one Ray restarted) reads nothing until the pool gives it its partitions
        (`take`), so one can stand by, ready, to take over a lost actor's partitions at once."""
        self.s = s
        set_niceness(self.s.latency_actor_niceness)
        # model_version None: the champion, followed between micro-batches.
        load = model_loader(self.s, load_compiled)
        self.follower = ChampionFollower(self.s, model_version, load=load)
        self.follower.current()  # loaded now: a model that cannot load fails the actor's start
        self.dedup = self.s.stream_subscription_type == "failover"
        self.client = make_client(self.s)
        self.index = -1
        self.consumer: pulsar.Consumer | None = None
        self.producers: dict[str, pulsar.Producer] = {}
        self.producer_names: dict[str, str] = {}  # input partition topic -> producer name
        self.sent: dict[str, int] = {}
        self.send_errors: list[str] = []  # filled by the client's callback threads
        self.committer = committer
        self.sender, self.hand_offs = uuid.uuid4().hex, 0  # the committer takes them in order
        self.pending = _Pending()
        # Hand-offs to the committer, oldest first: (its call, the inputs to acknowledge after).
        self.handed: deque[tuple[ray.ObjectRef, _Pending]] = deque()
        self.committed = 0
        self.answered_upto: dict[str, int] = {}
        self.source_marks = SourceMarks({})
        # A full collection walks every object of Ray, pyarrow, pyiceberg and scikit-learn:
        # 300-400 ms stalls of the loop here. What exists now lives as long as the actor.
        gc.collect()
        gc.freeze()

    def take(self, index: int, partitions: list[int] | None) -> None:
        """Start reading as the pool's actor `index`: its partitions (None: the whole topic),
        from the first unacknowledged message, with the marks the committer holds (committed
        or handed in: a lost actor's last hand-offs count). Once only."""
        if self.consumer is not None:
            raise RuntimeError(f"actor {self.index} already reads; it cannot take {index}")
        began = time.monotonic()
        self.index = index
        done, sources = ray.get(self.committer.positions.remote())
        # A redelivered message at or below its producer's mark was answered (or was a repeat)
        # before: acknowledged without a result, as a repeat, and without predicting again.
        self.answered_upto = done
        self.source_marks = SourceMarks(sources)
        self.consumer = subscribe(self.s, self.client, index, partitions)
        self.dead_letters = DeadLetters(self.s, self.client, self.consumer)
        logger.info("actor %d reads %s, in %.3f s", index, partitions, time.monotonic() - began)

    def _producer_name(self, topic: str) -> str:
        """The name of the results' producer for an input partition (`topic`)."""
        name = self.producer_names.get(topic)
        if name is None:
            name = f"{self.s.stream_subscription}-p{partition_of(topic)}"
            if not self.dedup:
                name = f"{name}-{self.index}"
            self.producer_names[topic] = name
        return name

    def _producer(self, topic: str) -> str:
        """The name of the results' producer for an input partition (`topic`), created once."""
        name = self._producer_name(topic)
        if name not in self.producers:
            # A batch is exactly what `_send_batches` sends before its flush: its size limits
            # are never reached first, and its timer never fires.
            self.producers[name] = self._create_producer(name)
            self.sent[name] = self.producers[name].last_sequence_id() if self.dedup else -1
        return name

    def _create_producer(self, name: str) -> pulsar.Producer:
        """The results' producer `name`. Its name fences: while another actor's producer of that
        name is connected (one that lost its partitions, or a dead one the broker has not
        dropped yet) the broker refuses it, and this actor waits, up to `PRODUCER_WAIT_S`."""
        deadline = time.monotonic() + PRODUCER_WAIT_S
        while True:
            try:
                return self.client.create_producer(
                    self.s.predictions_topic,
                    producer_name=name if self.dedup else None,
                    batching_enabled=True,
                    batching_max_messages=self.s.stream_batch_max + 1,
                    batching_max_allowed_size_in_bytes=2 * self.s.stream_results_batch_bytes,
                    batching_max_publish_delay_ms=BATCH_TIMER_OFF_MS,
                    block_if_queue_full=True,
                )
            except pulsar.ProducerBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def loaded(self) -> LoadedModel:
        return self.follower.current()

    def refresh_model(self) -> None:
        """Switch to a newly promoted (or rolled back) champion between micro-batches."""
        switched = self.follower.changed()
        if switched is not None:
            logger.info("switched to model version %d", switched.ref.version)

    def poll(self, limit: int) -> tuple[int, int, int]:
        """Micro-batches of at most `limit` messages in all, for at most `stream_poll_s` or
        until one finds nothing: (consumed, published, rejected).

        Many micro-batches per call keep the driver's round trip off each message's path. A
        redelivered message whose result an earlier incarnation already published is written
        where it is missing but not counted again. A crash before the poll returns loses the
        count (never the results), and a bounded run then ends once the stream runs dry.
        """
        if self.consumer is None:
            raise RuntimeError("poll before take: this actor was given no partitions")
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
        order, ranges = self.loaded.ref.feature_order, self.s.dataset_spec.ranges
        replays = 0
        for topic, seq, message in entries:
            try:
                key, features = parse_message(message.data(), self.s.key_column, order, ranges)
            except InvalidFeatures as error:
                self.dead_letters.reject(message, error.reason)
                continue
            source = source_position(message) if self.dedup else None
            producer = self._producer_name(topic)
            answered = self.dedup and seq <= self.answered_upto.get(producer, -1)
            if answered or (source is not None and self.source_marks.repeated(producer, source)):
                replays += 1
            else:
                good.append(_Parsed(topic, seq, message, key, features, source))
            # Acknowledged with the results handed off after it (entries are in position order).
            self.pending.messages.append(message)
            self.pending.last[topic] = message
        published = self._publish(good) if good else 0
        return len(messages), published, len(messages) - len(good) - replays

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
            self.loaded.model,
            self.loaded.ref,
            self.s.key_column,
            [p.key for p in good],
            [p.features for p in good],
        )
        predicted_at = datetime.now(UTC).replace(tzinfo=None).isoformat()
        # producer -> (payload, key, seq, event time)
        to_send: dict[str, list[tuple[bytes, str, int, int]]] = {}
        for parsed, row in zip(good, results, strict=True):
            name = self._producer(parsed.topic)
            row[MESSAGE_ID] = str(parsed.message.message_id())
            row[PREDICTED_AT] = predicted_at
            payload = json.dumps(row).encode()
            if not self.dedup or parsed.seq > self.sent[name]:
                event_ms = parsed.message.event_timestamp()
                to_send.setdefault(name, []).append((payload, parsed.key, parsed.seq, event_ms))
            producer = name if self.dedup else None
            source, source_seq = parsed.source or (None, -1)
            self.pending.rows.append(Result(producer, parsed.seq, payload, source, source_seq))
        for name, results_of in to_send.items():
            self._send_batches(name, results_of)
        # The next micro-batch starts while these are on their way; the hand-off at the poll's
        # end waits for them (inputs are acknowledged only after a commit).
        return sum(len(r) for r in to_send.values())

    def _send_batches(self, name: str, results: list[tuple[bytes, str, int, int]]) -> None:
        """Publish one input partition's results, in position order, in batches of at most
        `stream_results_batch_bytes`, each sent as soon as it is complete.

        The broker de-duplicates a batch by the sequence id of its metadata, which the client
        takes from the batch's first message (C++ client 4.2; later ones take the last). So the
        first message carries the batch's highest position: a batch is on the topic exactly when
        the producer's last sequence id reaches it, wherever a crash cut the stream."""
        producer = self.producers[name]
        sizes = [len(payload) for payload, _, _, _ in results]
        for start, end in batch_bounds(sizes, self.s.stream_results_batch_bytes):
            top = results[end - 1][2]
            for i in range(start, end):
                payload, key, seq, event_ms = results[i]
                extra = {"sequence_id": top if i == start else seq} if self.dedup else {}
                if event_ms > 0:
                    extra["event_timestamp"] = event_ms
                producer.send_async(payload, self._sent, partition_key=key, **extra)
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
            call = self.committer.add.remote(pending.rows, now, self.sender, self.hand_offs)
            self.hand_offs += 1
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
        if self.dedup and not self.dead_letters.waiting:
            for message in inputs.last.values():
                self.consumer.acknowledge_cumulative(message)
            return
        for message in inputs.messages:
            self.consumer.acknowledge(message)

    def close(self) -> int:
        """Commit what is buffered, close the clients; the rows this actor wrote to Iceberg."""
        if self.consumer is not None:
            self._hand_off(now=True)
        self._acknowledge_committed(wait_for=len(self.handed))
        for producer in self.producers.values():
            producer.close()
        if self.consumer is not None:
            self.consumer.close()
        self.client.close()
        return self.committed
