"""The Pulsar Functions `Context` on the Ray runtime, in full.

Message metadata, function identity, logger, user config, secrets (from the platform's settings,
which reach workers through their owner-only secrets file, never a pickle), metrics, `publish`
with Pulsar's message_conf, and state: counters and key-value state in the platform's SQL
database. State changes made while a batch is processed are buffered here and written by the
runtime in one transaction with the batch's input positions, before the inputs are
acknowledged (checkpoints.function_store); reads see the buffered changes.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from typing import Any

import pulsar
from pulsar.functions.context import Context
from pulsar.functions.serde import IdentitySerDe

from checkpoints.function_store import FunctionStore, StateChanges
from mlplatform.inference.stream.function_spec import FunctionSpec
from mlplatform.settings import Settings

SERDE = IdentitySerDe()
# Pulsar's message_conf keys that the Python client's send_async takes as they are.
MESSAGE_CONF = {
    "partition_key",
    "ordering_key",
    "sequence_id",
    "replication_clusters",
    "disable_replication",
    "event_timestamp",
    "deliver_at",
    "deliver_after",
}


class RayContext(Context):
    """One instance's context; `message` is the message being processed."""

    def __init__(
        self,
        s: Settings,
        spec: FunctionSpec,
        instance_id: int,
        client: pulsar.Client,
        store: FunctionStore,
    ) -> None:
        self.s, self.spec, self.instance_id = s, spec, instance_id
        self.client, self.store = client, store
        self.message: pulsar.Message | None = None
        self.producers: dict[str, pulsar.Producer] = {}
        self.metrics: dict[str, list[float]] = defaultdict(list)
        self.changes = StateChanges()
        self.send_errors: list[str] = []
        self.logger = logging.getLogger(f"pulsar.function.{spec.fqfn}")

    # The runtime's side
    def take_changes(self) -> StateChanges:
        changes, self.changes = self.changes, StateChanges()
        return changes

    def producer(self, topic: str) -> pulsar.Producer:
        if topic not in self.producers:
            self.producers[topic] = self.client.create_producer(topic, block_if_queue_full=True)
        return self.producers[topic]

    def flush(self) -> None:
        for producer in self.producers.values():
            producer.flush()
        if self.send_errors:
            errors, self.send_errors = self.send_errors, []
            raise RuntimeError(f"publishing failed: {errors[:3]}")

    def _sent(self, result: pulsar.Result, _message_id: object) -> None:
        if result != pulsar.Result.Ok:
            self.send_errors.append(str(result))

    # Message metadata
    def get_message_id(self):
        return self.message.message_id()

    def get_message_key(self):
        return self.message.partition_key()

    def get_message_eventtime(self):
        return self.message.event_timestamp()

    def get_message_properties(self):
        return self.message.properties()

    def get_current_message_topic_name(self):
        return self.message.topic_name()

    def get_message_sequence_id(self):
        """Pulsar's: (ledger id << 28) | entry id."""
        mid = self.message.message_id()
        return (mid.ledger_id() << 28) | mid.entry_id()

    def get_message_partition_index(self):
        return self.message.message_id().partition()

    def get_pulsar_client(self):
        return self.client

    def get_partition_key(self):
        return self.message.partition_key()

    def get_ordering_key(self):
        return self.message.ordering_key()

    # Identity and configuration
    def get_function_tenant(self):
        return self.spec.tenant

    def get_function_namespace(self):
        return self.spec.namespace

    def get_function_name(self):
        return self.spec.name

    def get_function_id(self):
        return self.spec.fqfn

    def get_instance_id(self):
        return self.instance_id

    def get_function_version(self):
        return hashlib.sha256(self.spec.model_dump_json().encode()).hexdigest()[:12]

    def get_logger(self):
        return self.logger

    def get_user_config_value(self, key):
        return self.spec.user_config.get(key)

    def get_user_config_map(self):
        return dict(self.spec.user_config)

    def get_secret(self, secret_name):
        """The value of the settings' secret field that `--secrets` maps this name to."""
        field = self.spec.secrets.get(secret_name)
        if field is None:
            return None
        value = getattr(self.s, field, None)
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    def record_metric(self, metric_name, metric_value):
        self.metrics[metric_name].append(float(metric_value))

    # Output
    def publish(
        self,
        topic_name,
        message,
        serde_class_name="serde.IdentitySerDe",
        properties=None,
        compression_type=None,
        callback=None,
        message_conf=None,
    ):
        if "IdentitySerDe" not in serde_class_name:
            raise ValueError(f"serde {serde_class_name} is not supported; use IdentitySerDe")
        options = dict(message_conf or {})
        unknown = set(options) - MESSAGE_CONF - {"properties"}
        if unknown:
            raise ValueError(f"message_conf keys {sorted(unknown)} are not supported")
        options["properties"] = {**(properties or {}), **options.get("properties", {})}
        self.producer(topic_name).send_async(
            SERDE.serialize(message), callback or self._sent, **options
        )

    def get_input_topics(self):
        return list(self.spec.inputs)

    def get_output_topic(self):
        return self.spec.output

    def get_output_serde_class_name(self):
        return "serde.IdentitySerDe"

    def ack(self, msgid, topic):
        """Acknowledgement is the runtime's: after the outputs and state are durable."""

    # State
    def incr_counter(self, key, amount):
        increments = self.changes.increments
        increments[key] = increments.get(key, 0) + int(amount)

    def get_counter(self, key):
        pending = self.changes.increments.get(key, 0)
        if key in self.changes.deleted_counters:
            return pending
        return self.store.counter(self.spec.fqfn, key) + pending

    def del_counter(self, key):
        self.changes.increments.pop(key, None)
        self.changes.deleted_counters.add(key)

    def put_state(self, key, value):
        self.changes.puts[key] = value.encode() if isinstance(value, str) else bytes(value)

    def get_state(self, key):
        if key in self.changes.puts:
            return self.changes.puts[key]
        return self.store.state(self.spec.fqfn, key)


def user_metrics(metrics: dict[str, list[float]]) -> dict[str, Any]:
    """Recorded metrics as Pulsar reports them: count, sum, max per name."""
    return {
        name: {"count": len(v), "sum": sum(v), "max": max(v, default=0.0)}
        for name, v in metrics.items()
    }
