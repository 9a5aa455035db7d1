"""Pulsar: topic administration over the admin REST API, and clients for the Python side."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pulsar

from mlplatform.settings import Settings


def topic_path(topic: str) -> str:
    """persistent://tenant/ns/name -> persistent/tenant/ns/name, as the admin API wants it."""
    scheme, _, rest = topic.partition("://")
    if not rest:
        raise ValueError(f"topic {topic!r} must be fully qualified: persistent://tenant/ns/name")
    return f"{scheme}/{rest}"


def admin_headers(s: Settings) -> dict[str, str]:
    """Headers for the admin REST API: the client token as a bearer token, when there is one."""
    token = s.pulsar_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def ensure_partitioned_topic(s: Settings, topic: str, partitions: int) -> None:
    """Create a partitioned topic; an existing one is left as it is."""
    url = f"{s.pulsar_admin_url}/admin/v2/{topic_path(topic)}/partitions"
    response = httpx.put(url, json=partitions, headers=admin_headers(s), timeout=30.0)
    if response.status_code not in (204, 409):
        raise RuntimeError(
            f"could not create topic {topic} ({response.status_code}): {response.text}"
        )


def ensure_subscription(s: Settings, topic: str, subscription: str) -> None:
    """Create a durable subscription at the earliest message, so the topic keeps its backlog
    for the stream consumers even before they first connect."""
    url = f"{s.pulsar_admin_url}/admin/v2/{topic_path(topic)}/subscription/{subscription}"
    position = {"entryId": -1, "ledgerId": -1}
    response = httpx.put(url, json=position, headers=admin_headers(s), timeout=30.0)
    if response.status_code not in (204, 409):
        raise RuntimeError(
            f"could not create subscription {subscription} on {topic} "
            f"({response.status_code}): {response.text}"
        )


def topic_partitions(s: Settings, topic: str) -> int:
    url = f"{s.pulsar_admin_url}/admin/v2/{topic_path(topic)}/partitions"
    response = httpx.get(url, headers=admin_headers(s), timeout=30.0)
    response.raise_for_status()
    return int(response.json()["partitions"])


def make_client(s: Settings) -> pulsar.Client:
    """A client of the configured broker, with the settings' token when there is one."""
    token = s.pulsar_token()
    return pulsar.Client(
        s.pulsar_service_url,
        authentication=pulsar.AuthenticationToken(token) if token else None,
        operation_timeout_seconds=30,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
    )


def receive_batch(
    consumer: pulsar.Consumer, limit: int, window_ms: int, linger_ms: int | None = None
) -> list[pulsar.Message]:
    """Up to `limit` messages, waiting at most `window_ms` in all; with `linger_ms`, at most
    that long after the first message (0: only the messages already received by then).

    Lingering 0 is natural batching: no message waits for others to arrive, and a batch grows
    with the backlog that built up while the previous one was processed."""
    messages: list[pulsar.Message] = []
    deadline = time.monotonic() + window_ms / 1000
    while len(messages) < limit:
        wait_ms = int((deadline - time.monotonic()) * 1000)
        if wait_ms <= 0 and not (messages and linger_ms == 0):
            break
        try:
            messages.append(consumer.receive(timeout_millis=max(wait_ms, 0)))
        except pulsar.Timeout:
            break
        if len(messages) == 1 and linger_ms is not None:
            deadline = min(deadline, time.monotonic() + linger_ms / 1000)
    return messages


def read_all(s: Settings, topic: str, timeout_ms: int = 2000) -> list[pulsar.Message]:
    """Every message on a topic from the start, read without a subscription (for checks)."""
    client = make_client(s)
    try:
        partitions = client.get_topic_partitions(topic)
        messages: list[pulsar.Message] = []
        for partition in partitions:
            reader = client.create_reader(partition, pulsar.MessageId.earliest)
            while reader.has_message_available():
                messages.append(reader.read_next(timeout_ms))
            reader.close()
        return messages
    finally:
        client.close()


def publish(s: Settings, topic: str, payloads: list[bytes], keys: list[str] | None = None) -> None:
    """Send raw payloads to a topic, unbatched (each message its own entry: see
    stream_preprocess on why raw events must not be batched), each with its message key from
    `keys` if given, and wait until the broker has them all."""
    client = make_client(s)
    failed: list[pulsar.Result] = []

    def sent(result: pulsar.Result, _message_id: object) -> None:
        if result != pulsar.Result.Ok:
            failed.append(result)

    try:
        producer = client.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
        for i, payload in enumerate(payloads):
            producer.send_async(payload, sent, **({"partition_key": keys[i]} if keys else {}))
        producer.flush()
        producer.close()
    finally:
        client.close()
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(payloads)} sends to {topic} failed: {failed[0]}")


def broker_stats(s: Settings, topic: str, per_partition: bool = False) -> dict[str, Any] | None:
    """The broker's stats of a topic (of a partitioned one: summed, and with `per_partition`
    each partition's under "partitions"); None when the topic does not exist."""
    base = f"{s.pulsar_admin_url}/admin/v2/{topic_path(topic)}"
    headers = admin_headers(s)
    params = {"perPartition": str(per_partition).lower()}
    response = httpx.get(f"{base}/partitioned-stats", params=params, headers=headers, timeout=10)
    if response.status_code in (404, 409):  # not partitioned, or not there
        response = httpx.get(f"{base}/stats", headers=headers, timeout=10.0)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def topic_stats(s: Settings, topic: str) -> dict[str, Any]:
    """Rates in and out and each subscription's backlog, summed over the topic's partitions."""
    stats = broker_stats(s, topic)
    if stats is None:
        return {"topic": topic, "exists": False}
    return {
        "topic": topic,
        "exists": True,
        "msg_rate_in": round(stats.get("msgRateIn", 0.0), 1),
        "msg_rate_out": round(stats.get("msgRateOut", 0.0), 1),
        "messages_in": stats.get("msgInCounter", 0),
        "backlog": {name: sub.get("msgBacklog", 0) for name, sub in stats["subscriptions"].items()},
    }
