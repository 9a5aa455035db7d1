"""`mlp functions`: pulsar-admin's function verbs and flags on the Ray runtime.

    mlp functions create --py examples/functions/word_count.py --classname word_count.WordCount \\
        --inputs persistent://public/default/words --output persistent://public/default/counts \\
        --name word-count --processing-guarantees EFFECTIVELY_ONCE
    mlp functions trigger --name word-count --trigger-value "to be or not to be"
    mlp functions status --name word-count
    mlp functions delete --name word-count

Documents are printed as JSON, as pulsar-admin prints them.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError

from mlplatform.ops.cli_errors import failing_on
from mlplatform.settings import get_settings

app = typer.Typer(
    help="Pulsar Functions on Ray, with pulsar-admin's verbs and flags.", no_args_is_help=True
)


# The flags of create, update and localrun: name -> (default, help, type).
SPEC_FLAGS: dict[str, tuple[Any, str, Any]] = {
    "py": (None, "The function's Python file.", str | None),
    "classname": (None, "module.Class (module: the file's name) or Class.", str | None),
    "inputs": (None, "Input topics, comma-separated.", str | None),
    "topics_pattern": (None, "A regex of input topics (instead of --inputs).", str | None),
    "output": (None, "The output topic (return values go there).", str | None),
    "user_config": (None, "User config, a JSON object.", str | None),
    "secrets": (None, 'Secrets: JSON {"name": "<settings secret field>"}.', str | None),
    "parallelism": (None, "Number of instances.", int | None),
    "max_message_retries": (None, "Retries of a failing message before the DLQ.", int | None),
    "dead_letter_topic": (None, "Where messages go after their retries.", str | None),
    "subs_name": (None, "Subscription name (default: tenant/namespace/name).", str | None),
    "processing_guarantees": (None, "ATLEAST_ONCE or EFFECTIVELY_ONCE.", str | None),
    "timeout_ms": (None, "Redeliver a message not acknowledged after this.", int | None),
    "window_length_count": (None, "Window of this many messages.", int | None),
    "sliding_interval_count": (None, "Slide count windows by this many.", int | None),
    "window_length_duration_ms": (None, "Window of this many milliseconds.", int | None),
    "sliding_interval_duration_ms": (None, "Slide time windows by this much.", int | None),
    "max_lag_ms": (None, "How late a message may be for its time window.", int | None),
    "window_timestamp": (None, "Time windows use 'publish' or 'event' time.", str | None),
}
IDENTITY = {
    "tenant": typer.Option("public", help="Tenant."),
    "namespace": typer.Option("default", help="Namespace."),
    "name": typer.Option(..., help="The function's name."),
}


def _parameter(name: str, default: Any, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _with_flags(*groups: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the identity flags and (with "spec") the spec flags; the command gets
    `tenant`, `namespace`, `name` and a dict `flags` of the spec flags that were given."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()]
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in own
            if p.name != "flags" and p.name not in IDENTITY
        ]
        extra = [_parameter(n, o, str) for n, o in IDENTITY.items()]
        if "spec" in groups:
            extra += [
                _parameter(n, typer.Option(d, help=h), t) for n, (d, h, t) in SPEC_FLAGS.items()
            ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            flags = {n: kwargs.pop(n) for n in SPEC_FLAGS if n in kwargs}
            if "spec" in groups:
                kwargs["flags"] = {n: v for n, v in flags.items() if v is not None}
            command(**kwargs)

        wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
        return wrapper

    return decorate


def _spec(tenant: str, namespace: str, name: str, flags: dict[str, Any], base: Any = None):
    """A FunctionSpec from the flags given, over `base` (update: the current spec)."""
    from mlplatform.inference.stream.function_spec import FunctionSpec

    values: dict[str, Any] = base.model_dump() if base is not None else {}
    values.update(tenant=tenant, namespace=namespace, name=name)
    for key, value in flags.items():
        if key == "inputs":
            value = tuple(t.strip() for t in value.split(",") if t.strip())
        elif key in ("user_config", "secrets"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                flag = "--" + key.replace("_", "-")
                raise typer.BadParameter(f"not JSON: {error}", param_hint=flag) from error
        values[key] = value
    try:
        return FunctionSpec(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'--' + '.'.join(map(str, e['loc'])).replace('_', '-') if e['loc'] else 'spec'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise typer.BadParameter(problems) from error


def _fqfn(tenant: str, namespace: str, name: str) -> str:
    return f"{tenant}/{namespace}/{name}"


def _echo(document: object) -> None:
    typer.echo(json.dumps(document, indent=2, default=str))


@app.command("create")
@_with_flags("spec")
def create(tenant: str, namespace: str, name: str, flags: dict[str, Any]) -> None:
    """Run a function on Ray until deleted (detached instances, restarted after a crash)."""
    from mlplatform.inference.stream import functions_admin

    spec = _spec(tenant, namespace, name, flags)
    with failing_on(ValueError, FileNotFoundError, AttributeError, ImportError):
        functions_admin.create(get_settings(), spec)
    typer.echo(
        f"Created {spec.fqfn} ({spec.parallelism} instance(s), {spec.processing_guarantees})"
    )


@app.command("update")
@_with_flags("spec")
def update(tenant: str, namespace: str, name: str, flags: dict[str, Any]) -> None:
    """Change a function's flags (the others stay); its instances restart with them."""
    from mlplatform.inference.stream import functions_admin

    s = get_settings()
    with failing_on(LookupError, ValueError, FileNotFoundError, AttributeError, ImportError):
        current = functions_admin.get(s, _fqfn(tenant, namespace, name))
        functions_admin.update(s, _spec(tenant, namespace, name, flags, current))
    typer.echo(f"Updated {_fqfn(tenant, namespace, name)}")


@app.command("localrun")
@_with_flags("spec")
def localrun(
    tenant: str,
    namespace: str,
    name: str,
    flags: dict[str, Any],
    max_messages: int | None = typer.Option(None, help="Stop after this many messages."),
    timeout_s: float | None = typer.Option(None, help="Stop after this many seconds."),
) -> None:
    """Run the function in this process, in the foreground (Ctrl-C stops it)."""
    from mlplatform.inference.stream import functions_admin

    spec = _spec(tenant, namespace, name, flags)
    with failing_on(ValueError, FileNotFoundError, AttributeError, ImportError):
        _echo(functions_admin.localrun(get_settings(), spec, max_messages, timeout_s))


@app.command("list")
def list_functions(
    tenant: str = IDENTITY["tenant"], namespace: str = IDENTITY["namespace"]
) -> None:
    """The functions of a namespace."""
    from mlplatform.inference.stream import functions_admin

    _echo(functions_admin.list_functions(get_settings(), tenant, namespace))


def _document(verb: Callable[..., Any], fqfn: str) -> None:
    with failing_on(LookupError):
        _echo(verb(get_settings(), fqfn))


@app.command("get")
@_with_flags()
def get(tenant: str, namespace: str, name: str) -> None:
    """A function's configuration."""
    from mlplatform.inference.stream import functions_admin

    _document(lambda s, f: functions_admin.get(s, f).model_dump(), _fqfn(tenant, namespace, name))


@app.command("status")
@_with_flags()
def status(tenant: str, namespace: str, name: str) -> None:
    """Instances running, processed and failed counts, latest exceptions, backlog."""
    from mlplatform.inference.stream import functions_admin

    _document(functions_admin.status, _fqfn(tenant, namespace, name))


@app.command("stats")
@_with_flags()
def stats(tenant: str, namespace: str, name: str) -> None:
    """Totals and per-instance statistics, with the function's own metrics."""
    from mlplatform.inference.stream import functions_admin

    _document(functions_admin.stats, _fqfn(tenant, namespace, name))


@app.command("restart")
@_with_flags()
def restart(tenant: str, namespace: str, name: str) -> None:
    """Stop and start a function's instances."""
    from mlplatform.inference.stream import functions_admin

    _document(
        lambda s, f: functions_admin.restart(s, f) or "Restarted", _fqfn(tenant, namespace, name)
    )


@app.command("trigger")
@_with_flags()
def trigger(
    tenant: str,
    namespace: str,
    name: str,
    trigger_value: str = typer.Option(..., help="The value to publish."),
    topic: str | None = typer.Option(None, help="The input topic (default: the first)."),
    timeout_s: float = typer.Option(30.0, help="How long to wait for the answer."),
) -> None:
    """Publish a value to the function's input and print its answer."""
    from mlplatform.inference.stream import functions_admin

    with failing_on(LookupError, ValueError):
        answer = functions_admin.trigger(
            get_settings(), _fqfn(tenant, namespace, name), trigger_value, topic, timeout_s
        )
    if answer is None:
        typer.echo(f"error: no answer within {timeout_s:g} s", err=True)
        raise typer.Exit(1)
    typer.echo(answer)


@app.command("delete")
@_with_flags()
def delete(
    tenant: str,
    namespace: str,
    name: str,
    purge_state: bool = typer.Option(False, help="Also delete its state and counters."),
) -> None:
    """Stop a function and forget it (its state stays unless --purge-state)."""
    from mlplatform.inference.stream import functions_admin

    with failing_on(LookupError):
        functions_admin.delete(get_settings(), _fqfn(tenant, namespace, name), purge_state)
    typer.echo(f"Deleted {_fqfn(tenant, namespace, name)}")


@app.command("metrics")
def metrics(
    port: int | None = typer.Option(None, help="Serve /metrics on 127.0.0.1:PORT until Ctrl-C."),
) -> None:
    """Every function's metrics in the Prometheus text format (Pulsar's metric names)."""
    from mlplatform.inference.stream.function_metrics import prometheus_text, registry

    s = get_settings()
    if port is None:
        typer.echo(prometheus_text(s), nl=False)
        return
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry(s))
    typer.echo(f"serving http://127.0.0.1:{port}/metrics (Ctrl-C stops)")
    try:
        while thread.is_alive():
            time.sleep(1)
    except KeyboardInterrupt:
        server.shutdown()
