"""Settings of the stream: every Pulsar topic, and stream inference's actors and batches."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class StreamSettings(BaseModel):
    """The topics that carry rows between stages, and how stream inference consumes them."""

    # Topics. Each has a producer and a consumer in different stages, so they are named here
    # together, as lake.py names every table.
    features_topic: str = "persistent://public/default/features"
    features_topic_partitions: int = 2
    predictions_topic: str = "persistent://public/default/predictions"
    stream_subscription: str = "stream-inference"
    stream_max_redeliveries: int = 3
    dead_letter_topic: str = "persistent://public/default/features-dlq"
    # Raw rows the Flink job rejects, as JSON with their reason (the Iceberg quarantine's twin).
    quarantine_topic: str = "persistent://public/default/raw-quarantine"
    # Raw events (one JSON object per message, the dataset's columns) for the stream-mode job.
    raw_events_topic: str = "persistent://public/default/raw-events"

    # Stream inference.
    # failover: effectively once, an actor per partition or more partitions per actor;
    # key_shared, shared: any number of actors, at least once (see inference/stream/runner.py).
    stream_subscription_type: Literal["failover", "key_shared", "shared"] = "failover"
    # Add actors where there are cores for them: on a small machine a second one competes with
    # the broker and is slower, with a longer tail (figures: docs/benchmarks.md).
    stream_actors: int = 1
    # Actors that start loaded (model, client, imports) but read nothing: a lost actor's
    # partitions go to one at once instead of waiting for Ray to restart it (a new process,
    # imports, the model: seconds). 0: none, a lost actor's partitions wait for its restart.
    stream_spare_actors: int = Field(default=1, ge=0)
    stream_actor_cpus: float = 0.25
    # Niceness of the stream actors and Serve replicas (Ray starts workers at 15, behind every
    # other process on the node; raising priority needs root or CAP_SYS_NICE).
    latency_actor_niceness: int = 0
    # A micro-batch is up to stream_batch_max messages or stream_batch_wait_ms, whichever first;
    # once its first message is in, it waits at most stream_batch_linger_ms for more (0: it
    # takes what is already received, so no message waits for later ones).
    stream_batch_max: int = 100
    stream_batch_wait_ms: int = 20
    stream_batch_linger_ms: int = 0
    # Messages each consumer prefetches per partition. The actors publish without waiting for
    # each micro-batch's receipts, so a short queue runs dry while the broker dispatches the
    # next permits (figures: docs/benchmarks.md).
    stream_receiver_queue: int = Field(default=1000, ge=1)
    # Results are published in batches of at most this many bytes (one broker entry each, a few
    # micro-batches' results; figures: docs/benchmarks.md), far below the broker's 5 MB limit.
    stream_results_batch_bytes: int = Field(default=128 * 1024, gt=0, le=1024 * 1024)
    # An actor reports to the driver and hands its results to the committer after this long at
    # most (micro-batches go on meanwhile). Each poll's end delays the messages then arriving,
    # so longer polls shorten the latency tail (figures: docs/benchmarks.md).
    stream_poll_s: float = 2.0
    stream_nack_delay_ms: int = 1000
    # Predictions are appended to Iceberg (and inputs acknowledged) this often, in one snapshot
    # for all the actors; snapshots of the stream predictions table older than the retention are
    # expired, since each one kept makes every commit slower (figures: docs/benchmarks.md).
    stream_commit_interval_s: float = 5.0
    stream_snapshot_retention_s: float = Field(default=600.0, gt=0)
