"""The features topic's partitions and positions, for the stream actors (see `consumer`'s
delivery protocol): which partitions an actor owns and how it subscribes to them, a message's
position as a sequence id, a partition's index, and the byte-bounded batches results go out in.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time

import pulsar

from mlplatform.connectors.pulsar_io import broker_stats
from mlplatform.settings import Settings

CONSUMER_TYPES = {
    "failover": pulsar.ConsumerType.Failover,
    "key_shared": pulsar.ConsumerType.KeyShared,
    "shared": pulsar.ConsumerType.Shared,
}


def sequence_id(message_id: pulsar.MessageId) -> int:
    """A message's position in its partition as one increasing integer (ledger, entry, batch)."""
    ledger, entry, index = message_id.ledger_id(), message_id.entry_id(), message_id.batch_index()
    if not (0 <= ledger < 1 << 29 and 0 <= entry < 1 << 24 and index < 1 << 10):
        raise ValueError(f"message id {message_id} is outside the sequence-id encoding")
    return (ledger << 34) | (entry << 10) | max(index, 0)


# The message properties the Flink job gives each features message (preprocess/flink_job.py):
# the raw-events partition it read the event from, and the event's message id there (base64).
SOURCE_TOPIC_PROPERTY = "mlp.source.topic"
SOURCE_ID_PROPERTY = "mlp.source.id"


def source_position(message: pulsar.Message) -> tuple[str, int] | None:
    """The raw event a features message came from: (its raw-events partition, as `r<index>`,
    its position there as a sequence id); None when the message carries none."""
    props = message.properties()
    topic, encoded = props.get(SOURCE_TOPIC_PROPERTY), props.get(SOURCE_ID_PROPERTY)
    if not topic or not encoded:
        return None
    try:
        raw_id = pulsar.MessageId.deserialize(base64.b64decode(encoded, validate=True))
    except (ValueError, binascii.Error, pulsar.PulsarException):
        return None
    return f"r{partition_of(topic)}", sequence_id(raw_id)


def source_mark_name(producer: str, source: str) -> str:
    """A source mark's name: a results producer (one per features partition) and a raw-events
    partition (`r<index>`)."""
    return f"{producer}.{source}"


class SourceMarks:
    """Per features partition and raw-events partition, the highest raw position that had its
    result. A features partition gets the raw events of each raw partition in their order (the
    Flink job reads a raw partition in order, and routes by key through one sink, so parallelism
    1), except the at-least-once delivery's repeats after a Flink failure, which go back."""

    def __init__(self, committed: dict[str, int]) -> None:
        self.marks = dict(committed)

    def repeated(self, producer: str, source: tuple[str, int]) -> bool:
        """Whether the raw event at `source` had its result from this producer already; if not,
        it is the newest from now on."""
        name = source_mark_name(producer, source[0])
        if source[1] <= self.marks.get(name, -1):
            return True
        self.marks[name] = source[1]
        return False


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


# A stream actor's consumer: its index and its process, which `reading_pids` reads back.
CONSUMER_NAME = re.compile(r"stream-inference-\d+-pid(\d+)")


def consumer_name(index: int) -> str:
    return f"stream-inference-{index}-pid{os.getpid()}"


def subscribe(
    s: Settings, client: pulsar.Client, index: int, partitions: list[int] | None
) -> pulsar.Consumer:
    """Actor `index`'s consumer: of its own partitions, each in order (failover), or of the
    whole topic (`partitions` None)."""
    topics: str | list[str] = s.features_topic
    if partitions is not None:
        topics = [f"{s.features_topic}-partition-{p}" for p in partitions]
    deadline = time.monotonic() + 30
    while True:  # a restarted actor may race the broker noticing its predecessor is gone
        try:
            return client.subscribe(
                topics,
                s.stream_subscription,
                consumer_type=CONSUMER_TYPES[s.stream_subscription_type],
                initial_position=pulsar.InitialPosition.Earliest,
                consumer_name=consumer_name(index),
                receiver_queue_size=s.stream_receiver_queue,
                negative_ack_redelivery_delay_ms=s.stream_nack_delay_ms,
            )
        except pulsar.PulsarException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def reading_pids(s: Settings) -> set[int]:
    """The processes of the stream actors that read the features topic now (a spare reads
    nothing), by the consumer names `subscribe` gives them (`consumer_name`)."""
    # Per partition: the summed stats merge the partitions' consumers position by position.
    stats = broker_stats(s, s.features_topic, per_partition=True) or {}
    names = [
        consumer.get("consumerName", "")
        for partition in stats.get("partitions", {"": stats}).values()
        for consumer in partition.get("subscriptions", {})
        .get(s.stream_subscription, {})
        .get("consumers", [])
    ]
    return {int(m.group(1)) for name in names if (m := CONSUMER_NAME.fullmatch(name))}
