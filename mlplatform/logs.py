"""Structured logs: one JSON object per line, each with the run it belongs to.

Opt-in with MLP_LOG_FORMAT=json; each flow calls `configure_logging(get_settings())` first.
`run_id` is the Prefect flow run id inside a flow run, else the id bound with `bound_run_id`
(a batch-inference checkpoint run, a stream run); code that has both binds its own as well
(`job_run_id`). Secret settings (tokens, auth strings, API keys) are masked in every line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from mlplatform.settings import Settings
from mlplatform.settings.secrets import secret_fields

MASK = "**********"
HANDLER_NAME = "mlp-json"
_job_run_id: ContextVar[str | None] = ContextVar("mlp_job_run_id", default=None)


@contextmanager
def bound_run_id(run_id: str) -> Iterator[None]:
    """Tag every log line in this context with a batch or stream run id."""
    token = _job_run_id.set(str(run_id))
    try:
        yield
    finally:
        _job_run_id.reset(token)


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run
    except ImportError:  # environments without Prefect (a Ray worker may lack it)
        return None
    try:
        return flow_run.id
    except Exception:  # noqa: BLE001 - a log line must never fail on its run id
        return None


class RunIdFilter(logging.Filter):
    """Sets `record.run_id` (flow run, else bound run) and `record.job_run_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _job_run_id.get()
        # Prefect's run loggers carry the id themselves, also after the run's context closed.
        tagged = getattr(record, "flow_run_id", None)
        tagged = tagged if tagged and tagged != "<unknown>" else None
        record.run_id = tagged or _flow_run_id() or job
        record.job_run_id = job
        return True


def secret_values(settings: Settings) -> list[str]:
    """The values of every secret setting, to mask wherever they would be written."""
    values = list(secret_fields(settings).values())
    try:
        token = settings.pulsar_token()  # also a token read from a file
    except ValueError:
        token = None
    if token:
        values.append(token)
    return sorted({v for v in values if v}, key=len, reverse=True)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, run_id (+ job_run_id, exc_info)."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = secrets or []

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "run_id"):
            RunIdFilter().filter(record)
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._mask(record.getMessage()),
            "run_id": record.run_id,
        }
        if record.job_run_id and record.job_run_id != record.run_id:
            line["job_run_id"] = record.job_run_id
        if record.exc_info:
            line["exc_info"] = self._mask(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def json_handler(settings: Settings) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(RunIdFilter())
    handler.setFormatter(JsonFormatter(secret_values(settings)))
    return handler


def configure_logging(settings: Settings) -> None:
    """With log_format "json", the console handlers of the root logger write JSON lines.

    Prefect's own console handler (rich text) is replaced; its API handler, which sends flow run
    logs to the UI, is left alone. Calling it again changes nothing.
    """
    if settings.log_format != "json":
        return
    root = logging.getLogger()
    if any(h.get_name() == HANDLER_NAME for h in root.handlers):
        return
    consoles = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    handler = json_handler(settings)
    if consoles:
        handler.setLevel(min(h.level for h in consoles))
    for console in consoles:
        root.removeHandler(console)
    root.addHandler(handler)
