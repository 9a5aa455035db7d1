"""pulsar-admin's function verbs on the Ray runtime: create, update, list, get, status, stats,
trigger, delete and localrun.

A created function is registered in the platform's database (checkpoints.function_store) and runs
as `parallelism` detached Ray actors named `<tenant>/<namespace>/<name>:<i>` in the Ray namespace
FUNCTIONS: they outlive the command that created them, and Ray restarts one that crashed (its
unacknowledged messages are redelivered). Delete stops them and forgets the registration; the
function's state stays unless purged, as Pulsar's state outlives a function.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pulsar
import ray

from checkpoints.function_store import FunctionStore
from mlplatform.connectors.pulsar_io import make_client, topic_stats
from mlplatform.connectors.ray_runtime import connect
from mlplatform.inference.stream.function_spec import FunctionSpec, load_function
from mlplatform.inference.stream.pulsar_functions import (
    INPUT_ID,
    FunctionActor,
    FunctionInstance,
)
from mlplatform.settings import Settings

FUNCTIONS = "mlp-functions"  # the Ray namespace of the functions' actors
READY_TIMEOUT_S = 120.0


class FunctionNotFound(LookupError):
    def __init__(self, fqfn: str) -> None:
        super().__init__(f"function {fqfn} does not exist (see `mlp functions list`)")


def fqfn_of(name: str, tenant: str = "public", namespace: str = "default") -> str:
    return name if name.count("/") == 2 else f"{tenant}/{namespace}/{name}"


def function_store(s: Settings) -> FunctionStore:
    return FunctionStore(s.resolved_database_url)


def get(s: Settings, fqfn: str) -> FunctionSpec:
    saved = function_store(s).spec_json(fqfn)
    if saved is None:
        raise FunctionNotFound(fqfn)
    return FunctionSpec.model_validate_json(saved)


def list_functions(s: Settings, tenant: str = "public", namespace: str = "default") -> list[str]:
    return [f.rpartition("/")[2] for f in function_store(s).list(f"{tenant}/{namespace}/")]


def _actor_name(fqfn: str, instance: int) -> str:
    return f"{fqfn}:{instance}"


def _instance(fqfn: str, instance: int) -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(_actor_name(fqfn, instance), namespace=FUNCTIONS)
    except ValueError:
        return None


def _start(s: Settings, spec: FunctionSpec) -> None:
    """Start the instances and wait until each has subscribed (a broken one fails here)."""
    connect(s)
    actors = [
        FunctionActor.options(
            name=_actor_name(spec.fqfn, i),
            namespace=FUNCTIONS,
            lifetime="detached",
            max_restarts=-1,
            num_cpus=s.stream_actor_cpus,
        ).remote(s, spec, i, forever=True)
        for i in range(spec.parallelism)
    ]
    try:
        ray.get([a.__ray_ready__.remote() for a in actors], timeout=READY_TIMEOUT_S)
    except Exception:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        raise


def _stop(s: Settings, spec: FunctionSpec) -> None:
    """Stop the instances: each finishes its batch and closes, then its actor goes."""
    connect(s)
    actors = [a for i in range(spec.parallelism) if (a := _instance(spec.fqfn, i)) is not None]
    refs = [a.close.remote() for a in actors]
    ray.wait(refs, num_returns=len(refs), timeout=60)
    for actor in actors:
        ray.kill(actor, no_restart=True)


def create(s: Settings, spec: FunctionSpec) -> None:
    load_function(spec.py, spec.classname)  # a broken file fails here, with its own error
    store = function_store(s)
    if store.spec_json(spec.fqfn) is not None:
        raise ValueError(f"function {spec.fqfn} already exists (use `mlp functions update`)")
    store.save(spec.fqfn, spec.model_dump_json())
    try:
        _start(s, spec)
    except Exception:
        store.remove(spec.fqfn)
        raise


def update(s: Settings, spec: FunctionSpec) -> None:
    """Replace a function's spec: its instances stop (acknowledging what they processed) and
    new ones start from the subscription's position, with the function's state as it is."""
    load_function(spec.py, spec.classname)
    old = get(s, spec.fqfn)
    _stop(s, old)
    function_store(s).save(spec.fqfn, spec.model_dump_json())
    _start(s, spec)


def delete(s: Settings, fqfn: str, purge_state: bool = False) -> None:
    spec = get(s, fqfn)
    _stop(s, spec)
    function_store(s).remove(fqfn, state=purge_state)


def restart(s: Settings, fqfn: str) -> None:
    spec = get(s, fqfn)
    _stop(s, spec)
    _start(s, spec)


def instance_stats(s: Settings, spec: FunctionSpec) -> list[dict[str, Any]]:
    connect(s)
    store = function_store(s)
    rows = []
    for i in range(spec.parallelism):
        actor = _instance(spec.fqfn, i)
        stats: dict[str, Any] = {"instanceId": i, "running": False}
        if actor is not None:
            try:
                stats = ray.get(actor.stats.remote(), timeout=10)
            except Exception as error:  # restarting, or gone: say so, do not fail the status
                stats["error"] = repr(error)[:300]
        stats["numRestarts"] = max(store.counter(spec.fqfn, f"__starts__/{i}") - 1, 0)
        rows.append(stats)
    return rows


def backlog(s: Settings, spec: FunctionSpec) -> int | None:
    """Messages of the inputs not yet acknowledged by the function's subscription."""
    stats = [topic_stats(s, topic) for topic in spec.inputs]
    if not stats or not all(t["exists"] for t in stats):
        return None
    return sum(t["backlog"].get(spec.subscription, 0) for t in stats)


def status(s: Settings, fqfn: str) -> dict[str, Any]:
    """Pulsar's `functions status` document, with the subscription's backlog."""
    spec = get(s, fqfn)
    instances = instance_stats(s, spec)
    keys = ("numReceived", "numSuccessfullyProcessed", "numUserExceptions", "numSystemExceptions")
    return {
        "numInstances": spec.parallelism,
        "numRunning": sum(1 for i in instances if i.get("running")),
        "backlog": backlog(s, spec),
        **{key: sum(i.get(key, 0) for i in instances) for key in keys},
        "instances": [{"instanceId": i["instanceId"], "status": i} for i in instances],
    }


def stats(s: Settings, fqfn: str) -> dict[str, Any]:
    """Pulsar's `functions stats` document: totals and per instance."""
    spec = get(s, fqfn)
    instances = instance_stats(s, spec)
    processed = sum(i.get("numSuccessfullyProcessed", 0) for i in instances)
    latency = sum(
        i.get("averageLatency", 0.0) * i.get("numSuccessfullyProcessed", 0) for i in instances
    )
    return {
        "receivedTotal": sum(i.get("numReceived", 0) for i in instances),
        "processedSuccessfullyTotal": processed,
        "systemExceptionsTotal": sum(i.get("numSystemExceptions", 0) for i in instances),
        "userExceptionsTotal": sum(i.get("numUserExceptions", 0) for i in instances),
        "avgProcessLatency": latency / processed if processed else None,
        "lastInvocation": max((i.get("lastInvocationTime", 0) for i in instances), default=0),
        "instances": instances,
    }


def summary(s: Settings) -> list[dict[str, Any]]:
    """One line per registered function, for `mlp status`."""
    rows = []
    for fqfn in function_store(s).list():
        state = status(s, fqfn)
        rows.append(
            {
                "function": fqfn,
                "running": f"{state['numRunning']}/{state['numInstances']}",
                "processed": state["numSuccessfullyProcessed"],
                "user_exceptions": state["numUserExceptions"],
                "backlog": state["backlog"],
            }
        )
    return rows


def trigger(
    s: Settings, fqfn: str, value: str, topic: str | None = None, timeout_s: float = 30.0
) -> str | None:
    """Publish `value` to an input topic and return the function's answer to it (None when the
    function answered nothing in time). The answer is found by its `__pfn_input_msg_id__`."""
    spec = get(s, fqfn)
    if not spec.output:
        raise ValueError(f"function {fqfn} has no output topic: there is no answer to wait for")
    topic = topic or (spec.inputs[0] if spec.inputs else None)
    if topic is None:
        raise ValueError("the function reads a topics pattern: give --topic")
    client = make_client(s)
    try:
        answers = client.subscribe(
            spec.output,
            f"trigger-{uuid.uuid4().hex[:8]}",
            initial_position=pulsar.InitialPosition.Latest,
        )
        sent = client.create_producer(topic).send(value.encode())
        wanted = (sent.ledger_id(), sent.entry_id())
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = answers.receive(timeout_millis=int(left * 1000))
                except pulsar.Timeout:
                    break
                answers.acknowledge(message)
                input_id = message.properties().get(INPUT_ID)
                if input_id:
                    got = pulsar.MessageId.deserialize(base64.b64decode(input_id))
                    if (got.ledger_id(), got.entry_id()) == wanted:
                        return message.data().decode(errors="replace")
            return None
        finally:
            answers.unsubscribe()
    finally:
        client.close()


def localrun(
    s: Settings,
    spec: FunctionSpec,
    max_messages: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run one instance per `parallelism` in this process, in the foreground, until
    `max_messages` are processed, `timeout_s` passes, or Ctrl-C; its statistics."""
    instances = [FunctionInstance(s, spec, i) for i in range(spec.parallelism)]
    started, processed = time.monotonic(), 0
    try:
        while max_messages is None or processed < max_messages:
            if timeout_s is not None and time.monotonic() - started >= timeout_s:
                break
            for instance in instances:
                left = instance.batch if max_messages is None else max_messages - processed
                processed += instance.poll(max(left, 1))[1]
    except KeyboardInterrupt:
        pass
    finally:
        for instance in instances:
            instance.close()
    return {"processed": processed, "instances": [i.stats() for i in instances]}
