"""A real Pulsar broker: produce, consume with a durable subscription, acknowledge."""

from __future__ import annotations

import uuid

import pulsar
import pytest

from mlplatform.connectors.pulsar_io import (
    ensure_partitioned_topic,
    make_client,
    read_all,
    topic_partitions,
)
from mlplatform.settings import Settings

pytestmark = pytest.mark.integration


def test_round_trip_on_a_partitioned_topic(isolated: Settings) -> None:
    topic = f"persistent://public/default/roundtrip-{uuid.uuid4().hex[:8]}"
    ensure_partitioned_topic(isolated, topic, 2)
    ensure_partitioned_topic(isolated, topic, 2)  # creating twice is harmless
    assert topic_partitions(isolated, topic) == 2
    client = make_client(isolated)
    try:
        consumer = client.subscribe(
            topic, "roundtrip", initial_position=pulsar.InitialPosition.Earliest
        )
        producer = client.create_producer(topic)
        sent = {f"m-{i}" for i in range(50)}
        for body in sent:
            producer.send(body.encode(), partition_key=body)
        received = set()
        while len(received) < len(sent):
            message = consumer.receive(timeout_millis=10_000)
            received.add(message.data().decode())
            consumer.acknowledge(message)
    finally:
        client.close()
    assert received == sent
    assert sorted(m.data().decode() for m in read_all(isolated, topic)) == sorted(sent)
