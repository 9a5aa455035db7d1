"""Feature messages that cannot be predicted: retried, then parked with their reason.

A message the one feature parser refuses (`inference.features`) is negatively acknowledged; on
its `stream_max_redeliveries`-th delivery it goes to the dead-letter topic with the properties
`reason` (the parser's `code: detail`), `source_topic`, `source_message_id` and `deliveries`,
and is acknowledged, so the stream goes on.
"""

from __future__ import annotations

import logging

import pulsar

from mlplatform.settings import Settings

logger = logging.getLogger(__name__)


class DeadLetters:
    """One consumer's refused messages: how often each was delivered, and where they go."""

    def __init__(self, s: Settings, client: pulsar.Client, consumer: pulsar.Consumer) -> None:
        self.s, self.client, self.consumer = s, client, consumer
        self.producer: pulsar.Producer | None = None
        self.deliveries: dict[str, int] = {}  # message id -> deliveries that failed

    @property
    def waiting(self) -> bool:
        """Whether a refused message waits for its redelivery (not acknowledged yet)."""
        return bool(self.deliveries)

    def reject(self, message: pulsar.Message, reason: str) -> None:
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
        if self.producer is None:
            self.producer = self.client.create_producer(self.s.dead_letter_topic)
        self.producer.send(
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
