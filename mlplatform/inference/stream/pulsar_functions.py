"""Run Pulsar Functions, unmodified, on Ray actors instead of a Pulsar functions worker.

A file written for Pulsar Functions (a class deriving from `pulsar.Function` with
`process(self, input, context)`, or a plain `process(input)` function) is loaded from its path.
Each Ray actor subscribes to the input topics (one Shared subscription named after the function),
deserializes each message as Pulsar's IdentitySerDe does, calls `process`, publishes a non-None
return value to the output topic, flushes, and only then acknowledges the inputs. A message whose
`process` raises is negatively acknowledged and ends in the dead-letter topic after the configured
redeliveries. Pickle serdes are refused: nothing is unpickled from a topic.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulsar
import ray
from pulsar.functions.context import Context
from pulsar.functions.serde import IdentitySerDe

from mlplatform.connectors.pulsar_io import make_client, receive_batch
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.stream.actor_pool import closing, drive
from mlplatform.registry import model_registry
from mlplatform.settings import Settings

SERDE = IdentitySerDe()


@dataclass(frozen=True)
class FunctionSpec:
    """What `pulsar-admin functions create` would be told: file, class, topics, user config."""

    py: str
    classname: str
    inputs: tuple[str, ...]
    output: str | None
    name: str
    user_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FunctionRunResult:
    consumed: int
    processed: int
    failed: int
    metrics: dict[str, float]
    seconds: float


def load_function(py: str, classname: str) -> Any:
    """The function object: an instance of the named class, or the module's plain function."""
    path = Path(py)
    if not path.is_file():
        raise FileNotFoundError(f"function file {py} does not exist")
    spec = importlib.util.spec_from_file_location(f"pulsar_function_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    target = getattr(module, classname, None)
    if target is None:
        raise AttributeError(f"{py} defines no {classname!r}")
    return target() if isinstance(target, type) else target


def champion_user_config(s: Settings, version: int | None = None) -> dict[str, str]:
    """User config that tells a function where the (verified) model and its metadata are."""
    row = model_registry.get_version(s, version)
    return {
        "model_path": row.artifact_path,
        "model_sha256": row.sha256,
        "model_version": str(row.version),
        "feature_order": ",".join(row.feature_order),
        "label_names": ",".join(row.label_names),
        # The dataset spec's ranges, the rule every entry checks: name:min:max,...
        "feature_ranges": ",".join(
            f"{name}:{low!r}:{high!r}" for name, (low, high) in s.dataset_spec.ranges.items()
        ),
    }


class RayContext(Context):
    """The Pulsar Functions context on our runtime: logger, user config, publish, message
    metadata, metrics. State and counters need Pulsar's state store and are not offered."""

    def __init__(self, spec: FunctionSpec, instance_id: int, client: pulsar.Client) -> None:
        self.spec, self.instance_id, self.client = spec, instance_id, client
        self.message: pulsar.Message | None = None
        self.producers: dict[str, pulsar.Producer] = {}
        self.metrics: dict[str, list[float]] = defaultdict(list)
        self.logger = logging.getLogger(f"pulsar.function.{spec.name}")

    def producer(self, topic: str) -> pulsar.Producer:
        if topic not in self.producers:
            self.producers[topic] = self.client.create_producer(topic, block_if_queue_full=True)
        return self.producers[topic]

    def flush(self) -> None:
        for producer in self.producers.values():
            producer.flush()

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

    def get_partition_key(self):
        return self.message.partition_key()

    def get_ordering_key(self):
        return self.message.ordering_key()

    def get_function_tenant(self):
        return "public"

    def get_function_namespace(self):
        return "default"

    def get_function_name(self):
        return self.spec.name

    def get_function_id(self):
        return self.spec.name

    def get_instance_id(self):
        return self.instance_id

    def get_function_version(self):
        return "1"

    def get_logger(self):
        return self.logger

    def get_user_config_value(self, key):
        return self.spec.user_config.get(key)

    def get_user_config_map(self):
        return dict(self.spec.user_config)

    def get_secret(self, secret_name):
        return None

    def record_metric(self, metric_name, metric_value):
        self.metrics[metric_name].append(float(metric_value))

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
        self.producer(topic_name).send_async(
            SERDE.serialize(message), callback, properties=properties or {}
        )

    def get_input_topics(self):
        return list(self.spec.inputs)

    def get_output_topic(self):
        return self.spec.output

    def get_output_serde_class_name(self):
        return "serde.IdentitySerDe"

    def ack(self, msgid, topic):
        """Acknowledgement is the runtime's: after the outputs are durable."""

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("function state and counters need Pulsar's state store")

    incr_counter = get_counter = del_counter = put_state = get_state = _unsupported


@ray.remote(max_restarts=3, max_task_retries=0)
class FunctionInstance:
    """One instance of a Pulsar Function, consuming the input topics on a Shared subscription."""

    def __init__(self, s: Settings, spec: FunctionSpec, instance_id: int, batch: int) -> None:
        self.s, self.spec = s, spec
        self.function = load_function(spec.py, spec.classname)
        self.client = make_client(self.s)
        self.consumer = self.client.subscribe(
            list(spec.inputs),
            spec.name,
            consumer_type=pulsar.ConsumerType.Shared,
            initial_position=pulsar.InitialPosition.Earliest,
            receiver_queue_size=batch,
            negative_ack_redelivery_delay_ms=self.s.stream_nack_delay_ms,
            dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(
                max_redeliver_count=self.s.stream_max_redeliveries,
                dead_letter_topic=f"{spec.inputs[0]}-{spec.name}-DLQ",
            ),
        )
        self.context = RayContext(spec, instance_id, self.client)

    def _call(self, value: Any) -> Any:
        if hasattr(self.function, "process"):
            return self.function.process(value, self.context)
        return self.function(value)

    def poll(self, limit: int) -> tuple[int, int, int]:
        """Process up to `limit` messages: (consumed, processed, failed)."""
        messages = receive_batch(self.consumer, limit, self.s.stream_batch_wait_ms)
        done = []
        for message in messages:
            self.context.message = message
            try:
                result = self._call(SERDE.deserialize(message.data()))
                if result is not None and self.spec.output:
                    self.context.publish(self.spec.output, result)
                done.append(message)
            except Exception:
                self.context.logger.exception("process() failed on %s", message.message_id())
                self.consumer.negative_acknowledge(message)
        self.context.flush()  # outputs durable before their inputs are acknowledged
        for message in done:
            self.consumer.acknowledge(message)
        return len(messages), len(done), len(messages) - len(done)

    def metrics(self) -> dict[str, list[float]]:
        return dict(self.context.metrics)

    def close(self) -> None:
        self.context.flush()
        self.consumer.close()
        self.client.close()


def run_function(
    s: Settings,
    spec: FunctionSpec,
    parallelism: int = 1,
    max_messages: int | None = None,
    timeout_s: float = 60.0,
    batch: int = 100,
) -> FunctionRunResult:
    """Run `parallelism` instances until max_messages are processed or timeout_s passes."""
    started = time.monotonic()
    load_function(spec.py, spec.classname)  # a broken file fails here, with its own error
    connect(s)
    instances = [
        FunctionInstance.options(num_cpus=0.25).remote(s, spec, i, batch)
        for i in range(parallelism)
    ]
    with closing(instances):
        run = drive(instances, batch, max_messages, timeout_s)
        totals: dict[str, float] = defaultdict(float)
        for metrics in ray.get([i.metrics.remote() for i in instances]):
            for name, values in metrics.items():
                totals[name] += sum(values)
    return FunctionRunResult(
        run.consumed, run.done, run.failed, dict(totals), time.monotonic() - started
    )
