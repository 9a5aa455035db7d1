"""Metrics of the running functions in the Prometheus text format, under the names Pulsar's
functions worker exports (`pulsar_function_*`, labelled tenant/namespace/name/instance_id), so
that dashboards and alerts written for Pulsar keep working. Read from the instances at each
scrape (`mlp functions metrics`, or `--port` to serve /metrics on 127.0.0.1)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlplatform.inference.stream import functions_admin
from mlplatform.settings import Settings

LABELS = ["tenant", "namespace", "name", "instance_id", "fqfn"]
COUNTERS = {
    "received": ("numReceived", "Messages received"),
    "processed_successfully": ("numSuccessfullyProcessed", "Messages processed successfully"),
    "user_exceptions": ("numUserExceptions", "Exceptions raised by the function's code"),
    "system_exceptions": ("numSystemExceptions", "Exceptions raised by the runtime"),
    "restarts": ("numRestarts", "Times the instance was restarted after a crash"),
}


class FunctionsCollector(Collector):
    """Every registered function's instances, asked at collection time."""

    def __init__(self, s: Settings) -> None:
        self.s = s

    def collect(self) -> Iterator[Metric]:
        counters = {
            key: CounterMetricFamily(f"pulsar_function_{key}", text, labels=LABELS)
            for key, (_, text) in COUNTERS.items()
        }
        latency = GaugeMetricFamily(
            "pulsar_function_process_latency_ms", "Mean time in process()", labels=LABELS
        )
        last = GaugeMetricFamily(
            "pulsar_function_last_invocation", "Time of the last process() call", labels=LABELS
        )
        user: dict[str, GaugeMetricFamily] = {}
        for fqfn in functions_admin.function_store(self.s).list():
            spec = functions_admin.get(self.s, fqfn)
            for stats in functions_admin.instance_stats(self.s, spec):
                labels = [spec.tenant, spec.namespace, spec.name, str(stats["instanceId"]), fqfn]
                for key, (field, _) in COUNTERS.items():
                    counters[key].add_metric(labels, stats.get(field, 0))
                latency.add_metric(labels, stats.get("averageLatency", 0.0))
                last.add_metric(labels, stats.get("lastInvocationTime", 0) / 1000)
                for metric, values in stats.get("userMetrics", {}).items():
                    name = "pulsar_function_user_metric_" + re.sub(r"\W", "_", metric)
                    family = user.setdefault(
                        name, GaugeMetricFamily(name, f"User metric {metric} (sum)", labels=LABELS)
                    )
                    family.add_metric(labels, values["sum"])
        yield from counters.values()
        yield latency
        yield last
        yield from user.values()


def registry(s: Settings) -> CollectorRegistry:
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(FunctionsCollector(s))
    return collectors


def prometheus_text(s: Settings) -> str:
    return generate_latest(registry(s)).decode()
