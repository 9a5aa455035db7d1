"""Stream inference: a pool of Ray actors (`consumer.StreamConsumer`) consumes the features topic,
predicts, and writes every prediction once to the predictions topic and once to an Iceberg
table through one `committer.StreamCommitter`; the delivery protocol is in `consumer`.

This is the driver's side: it resolves the model version, makes the tables, gives each actor
its partitions (failover) and polls the pool through `actor_pool.drive` until the run ends.
`stream_spare_actors` more actors start beside them, loaded (model, client, imports) but
reading nothing: a lost actor's partitions go to a spare at once, rather than wait for Ray to
restart the actor (seconds: a new worker process, imports, the model); the restarted actor is
then the spare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from mlplatform.connectors.iceberg_tables import ensure_tables
from mlplatform.connectors.pulsar_io import topic_partitions, topic_stats
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.stream.actor_pool import closing, drive
from mlplatform.inference.stream.committer import StreamCommitter
from mlplatform.inference.stream.consumer import StreamConsumer
from mlplatform.inference.stream.partitions import owned_partitions
from mlplatform.registry import model_registry
from mlplatform.settings import Settings

# A poll handles at most this many micro-batches (and at most stream_poll_s).
BATCHES_PER_POLL = 50


@dataclass(frozen=True)
class StreamResult:
    consumed: int
    published: int
    failed: int
    model_version: int
    seconds: float
    actor_restarts: int = 0


def run_stream_inference(
    s: Settings,
    max_messages: int | None = None,
    timeout_s: float | None = 60.0,
    model_version: int | None = None,
) -> StreamResult:
    """Consume until max_messages are accepted or timeout_s passes (None: until cancelled).
    `model_version` pins a version; None follows the champion."""
    started = time.monotonic()
    version = model_registry.get_version(s, model_version).version  # none: say so here
    ensure_tables(s)
    connect(s)
    owned: list[list[int] | None] = [None] * s.stream_actors
    if s.stream_subscription_type == "failover":
        partitions = topic_partitions(s, s.features_topic)
        owned = [owned_partitions(i, s.stream_actors, partitions) for i in range(s.stream_actors)]
        if partitions == 0:  # a non-partitioned topic is read whole by the one actor
            owned = [None]
    # Mostly idle, and at Ray's niceness (15): behind the consumers when both want a core.
    committer = StreamCommitter.options(num_cpus=0).remote(s, s.stream_predictions_table)
    try:
        actors = [
            StreamConsumer.options(num_cpus=s.stream_actor_cpus).remote(s, model_version, committer)
            for _ in range(len(owned) + s.stream_spare_actors)
        ]

        def assign(actor: ray.actor.ActorHandle, index: int) -> ray.ObjectRef:
            return actor.take.remote(index, owned[index])

        def backlog() -> int:
            return topic_stats(s, s.features_topic)["backlog"].get(s.stream_subscription, 0)

        with closing(actors):
            ray.get([assign(actor, i) for i, actor in enumerate(actors[: len(owned)])])
            batch = s.stream_batch_max * BATCHES_PER_POLL
            workers, spares = actors[: len(owned)], actors[len(owned) :]
            totals = drive(
                workers,
                batch,
                max_messages,
                timeout_s,
                backlog=backlog,
                spares=spares,
                assign=assign,
            )
    finally:
        ray.kill(committer)
    return StreamResult(
        totals.consumed,
        totals.done,
        totals.failed,
        version,
        time.monotonic() - started,
        totals.restarts,
    )
