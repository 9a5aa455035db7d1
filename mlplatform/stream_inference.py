"""Stream inference: a pool of Ray actors consumes the features topic, predicts, publishes.

Each actor owns a Pulsar consumer on one Shared subscription and a producer on the predictions
topic. A poll receives up to `batch` messages, predicts them in one call, publishes every result,
flushes, and only then acknowledges the inputs; a failure negatively acknowledges them so Pulsar
redelivers. The driver polls the actors until N messages or T seconds.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pulsar
import ray

from mlplatform import model_registry
from mlplatform.actor_pool import closing, drive
from mlplatform.model_registry import ModelRef
from mlplatform.pulsar_io import make_client, receive_batch
from mlplatform.ray_runtime import connect
from mlplatform.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamResult:
    consumed: int
    published: int
    failed: int
    model_version: int
    seconds: float


def predict_messages(
    model: object, ref: ModelRef, key: str, payloads: list[bytes]
) -> list[dict[str, object]]:
    """Predictions for a micro-batch of JSON feature messages, in input order."""
    rows = [json.loads(p) for p in payloads]
    features = np.array([[float(r[c]) for c in ref.feature_order] for r in rows], dtype=np.float64)
    probabilities = model.predict_proba(features)  # type: ignore[attr-defined]
    return [
        {
            key: row[key],
            "prediction": int(p.argmax()),
            "label_name": ref.label_names[int(p.argmax())],
            "probabilities": [float(v) for v in p],
            "model_version": ref.version,
        }
        for row, p in zip(rows, probabilities, strict=True)
    ]


@ray.remote(max_restarts=3, max_task_retries=0)
class StreamConsumer:
    """One consumer of the features topic; predicts and publishes in micro-batches."""

    def __init__(
        self, settings: dict, ref: ModelRef, index: int, batch: int, pinned: bool = False
    ) -> None:
        self.s = Settings(**settings)
        self.ref, self.pinned = ref, pinned
        self.model = model_registry.load_model(ref)
        self.checked_at = time.monotonic()
        self.client = make_client(self.s)
        self.consumer = self.client.subscribe(
            self.s.features_topic,
            self.s.stream_subscription,
            consumer_type=pulsar.ConsumerType.Shared,
            initial_position=pulsar.InitialPosition.Earliest,
            consumer_name=f"stream-inference-{index}",
            # A small prefetch queue spreads messages across the actors of the pool.
            receiver_queue_size=batch,
            negative_ack_redelivery_delay_ms=1000,
            # A message that keeps failing stops being retried and is parked with its reason.
            dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(
                max_redeliver_count=self.s.stream_max_redeliveries,
                dead_letter_topic=self.s.dead_letter_topic,
            ),
        )
        self.producer = self.client.create_producer(
            self.s.predictions_topic, batching_enabled=True, block_if_queue_full=True
        )

    def refresh_model(self) -> None:
        """Switch to a newly promoted (or rolled back) champion between micro-batches."""
        if self.pinned or time.monotonic() - self.checked_at < self.s.model_refresh_s:
            return
        self.checked_at = time.monotonic()
        champion = model_registry.get_version(self.s)
        if champion.version != self.ref.version:
            ref = model_registry.model_ref(champion)
            self.model, self.ref = model_registry.load_model(ref), ref
            logger.info("switched to model version %d", ref.version)

    def poll(self, limit: int) -> tuple[int, int, int]:
        """Process one micro-batch of at most `limit` messages: (consumed, published, failed)."""
        self.refresh_model()
        messages = receive_batch(self.consumer, limit, self.s.stream_receive_timeout_ms)
        if not messages:
            return 0, 0, 0
        try:
            results = predict_messages(
                self.model, self.ref, self.s.key_column, [m.data() for m in messages]
            )
            for message, result in zip(messages, results, strict=True):
                result["message_id"] = str(message.message_id())
                self.producer.send_async(
                    json.dumps(result).encode(), None, partition_key=str(result[self.s.key_column])
                )
            self.producer.flush()  # durable on the broker before any input is acknowledged
        except Exception:
            logger.exception(
                "micro-batch of %d messages failed; negatively acknowledged", len(messages)
            )
            for message in messages:
                self.consumer.negative_acknowledge(message)
            return len(messages), 0, len(messages)
        for message in messages:
            self.consumer.acknowledge(message)
        return len(messages), len(results), 0

    def close(self) -> None:
        self.producer.flush()
        self.consumer.close()
        self.client.close()


def run_stream_inference(
    s: Settings,
    max_messages: int | None = None,
    timeout_s: float = 60.0,
    model_version: int | None = None,
    batch: int = 100,
) -> StreamResult:
    """Consume until max_messages are processed or timeout_s passes, whichever comes first."""
    started = time.monotonic()
    ref = model_registry.model_ref(model_registry.get_version(s, model_version))
    connect(s)
    actors = [
        StreamConsumer.options(num_cpus=0.25).remote(
            s.model_dump(mode="json"), ref, i, batch, model_version is not None
        )
        for i in range(s.stream_actors)
    ]
    with closing(actors):
        consumed, published, failed = drive(actors, batch, max_messages, timeout_s)
    return StreamResult(consumed, published, failed, ref.version, time.monotonic() - started)
