"""The features topic's partitions and positions, for the stream actors (see `consumer`'s
delivery protocol): which partitions an actor owns and how it subscribes to them, a message's
position as a sequence id, a partition's index, and the byte-bounded batches results go out in.
"""

from __future__ import annotations

import time

import pulsar

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
                consumer_name=f"stream-inference-{index}",
                receiver_queue_size=s.stream_receiver_queue,
                negative_ack_redelivery_delay_ms=s.stream_nack_delay_ms,
            )
        except pulsar.PulsarException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
