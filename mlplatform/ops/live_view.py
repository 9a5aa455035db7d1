"""The real-time path at a glance: rates, lag and the raw event -> prediction latency.

Read from the broker only (topic stats, and the predictions published in the last seconds), never
from the running processes, so `mlp status` (`--watch`) and the realtime flow's artifact show the
same figures, and a look costs the pipeline nothing but one reader. A prediction's event time is
its raw event's publish time (the Flink job and the stream actors carry it on), so its publish
time minus its event time is the whole path's latency.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import pulsar

from mlplatform.connectors.pulsar_io import make_client, topic_stats
from mlplatform.preprocess.stream import LAKE, job_name
from mlplatform.settings import Settings


@dataclass(frozen=True)
class LiveView:
    window_s: float
    predictions: int  # published in the window
    predictions_per_s: float
    raw_events_per_s: float  # into the raw-events topic (the broker's rate)
    flink_lag: int  # raw events the real-time stream job has not read yet
    lake_lag: int  # features rows the lake job has not committed to the Iceberg tables yet
    consumer_lag: int  # features messages the stream actors have not acknowledged
    latency_ms: dict[str, float]  # p50, p99, max of raw event -> prediction, in the window

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max (nearest rank), rounded to 0.1; empty without values."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    return {"p50": round(rank(50), 1), "p99": round(rank(99), 1), "max": round(ordered[-1], 1)}


def _available(reader: pulsar.Reader, attempts: int = 50) -> bool:
    """Whether the reader has a message to read. A seek makes the broker drop the reader's
    consumer and the client subscribe it again; asked in between, the broker answers "Consumer
    not found" (BrokerMetadataError): asked again after 0.1 s."""
    for _ in range(attempts - 1):
        try:
            return reader.has_message_available()
        except pulsar.BrokerMetadataError:
            time.sleep(0.1)
    return reader.has_message_available()


def recent_latencies(s: Settings, window_s: float) -> list[float]:
    """Milliseconds from raw event to prediction of each prediction published in the last
    `window_s` seconds (those that carry an event time)."""
    latencies: list[float] = []
    if not topic_stats(s, s.predictions_topic)["exists"]:
        return latencies
    client = make_client(s)
    since_ms = int((time.time() - window_s) * 1000)
    try:
        for partition in client.get_topic_partitions(s.predictions_topic):
            reader = client.create_reader(partition, pulsar.MessageId.earliest)
            reader.seek(since_ms)  # the first message published at or after it
            while _available(reader):
                message = reader.read_next(2000)
                event_ms = message.event_timestamp()
                if event_ms > 0 and message.publish_timestamp() >= since_ms:
                    latencies.append(float(message.publish_timestamp() - event_ms))
            reader.close()
    finally:
        client.close()
    return latencies


def live_view(s: Settings, window_s: float = 5.0) -> LiveView:
    latencies = recent_latencies(s, window_s)
    raw = topic_stats(s, s.raw_events_topic)
    features = topic_stats(s, s.features_topic)
    return LiveView(
        window_s=window_s,
        predictions=len(latencies),
        predictions_per_s=round(len(latencies) / window_s, 1),
        raw_events_per_s=raw.get("msg_rate_in", 0.0),
        flink_lag=raw.get("backlog", {}).get(job_name(s), 0),
        lake_lag=features.get("backlog", {}).get(job_name(s, LAKE), 0),
        consumer_lag=features.get("backlog", {}).get(s.stream_subscription, 0),
        latency_ms=percentiles(latencies),
    )


def markdown(view: LiveView, namespace: str) -> str:
    """The live view as the realtime flow's artifact shows it."""
    latency = view.latency_ms
    return "\n".join(
        [
            f"# Real-time path: {namespace}",
            "",
            f"At {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, over the last "
            f"{view.window_s:g} s.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| raw events in, per s | {view.raw_events_per_s} |",
            f"| predictions out, per s | {view.predictions_per_s} |",
            f"| Flink lag (raw events not read) | {view.flink_lag} |",
            f"| lake lag (features rows not in the Iceberg tables yet) | {view.lake_lag} |",
            f"| consumer lag (features not acknowledged) | {view.consumer_lag} |",
            f"| raw event -> prediction p50 / p99 / max, ms | {latency.get('p50', '-')} / "
            f"{latency.get('p99', '-')} / {latency.get('max', '-')} |",
        ]
    )
