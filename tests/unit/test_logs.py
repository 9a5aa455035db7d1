"""JSON log lines: run id, level, logger, message on every line; secrets never written."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from mlplatform.logs import HANDLER_NAME, MASK, bound_run_id, configure_logging, json_handler
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit

PULSAR_TOKEN = "eyJhbGciOiJIUzI1NiJ9.pulsar-token-value"
PREFECT_AUTH = "mlp-admin:prefect-auth-value"
SERVE_KEY = "serve-api-key-value"
SECRETS = (PULSAR_TOKEN, PREFECT_AUTH, SERVE_KEY)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        local_dir=tmp_path,
        log_format="json",
        pulsar_auth_token=SecretStr(PULSAR_TOKEN),
        prefect_api_auth_string=SecretStr(PREFECT_AUTH),
        serve_api_key=SERVE_KEY,
    )


@pytest.fixture
def captured(settings: Settings) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = json_handler(settings)
    handler.setStream(stream)
    logger = logging.getLogger(f"mlplatform.test_logs.{uuid.uuid4().hex[:6]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_json_with_run_id_level_logger_message(
    captured: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = captured
    flow_run = str(uuid.uuid4())
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", flow_run)  # what a deployment's flow run has
    logger.info("rows %d", 10)
    with bound_run_id("batch-42"):
        logger.warning('multi\nline "quoted" message')
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID")
    with bound_run_id("stream-7"):
        logger.error("outside a flow run")
    logger.debug("no run at all")
    logger.info("after the run", extra={"flow_run_id": flow_run})  # Prefect's run loggers

    lines = _lines(stream)
    assert len(stream.getvalue().splitlines()) == 5  # newlines inside a message stay escaped
    for line in lines:
        assert {"ts", "level", "logger", "message", "run_id"} <= line.keys()
        assert line["logger"] == logger.name
    assert [line["level"] for line in lines] == ["INFO", "WARNING", "ERROR", "DEBUG", "INFO"]
    assert lines[0]["message"] == "rows 10" and lines[0]["run_id"] == flow_run
    assert lines[1]["run_id"] == flow_run and lines[1]["job_run_id"] == "batch-42"
    assert lines[1]["message"] == 'multi\nline "quoted" message'
    assert lines[2]["run_id"] == "stream-7" and "job_run_id" not in lines[2]
    assert lines[3]["run_id"] is None
    assert lines[4]["run_id"] == flow_run


def test_secrets_never_appear(
    captured: tuple[logging.Logger, io.StringIO], settings: Settings
) -> None:
    logger, stream = captured
    logger.info("settings: %s", settings)
    logger.info("token %s auth %s key %s", PULSAR_TOKEN, PREFECT_AUTH, SERVE_KEY)
    try:
        raise RuntimeError(f"connect failed with {PULSAR_TOKEN}")
    except RuntimeError:
        logger.exception("failed")

    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text
    lines = _lines(stream)
    assert lines[1]["message"] == f"token {MASK} auth {MASK} key {MASK}"
    assert MASK in lines[2]["exc_info"] and "RuntimeError" in lines[2]["exc_info"]


def test_token_file_contents_are_masked(tmp_path: Path) -> None:
    token_file = tmp_path / "client.token"
    token_file.write_text("file-token-value\n")
    s = Settings(_env_file=None, local_dir=tmp_path, pulsar_auth_token_file=token_file)
    stream = io.StringIO()
    handler = json_handler(s)
    handler.setStream(stream)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "t=file-token-value", None, None)
    handler.handle(record)
    assert "file-token-value" not in stream.getvalue()


@pytest.fixture
def root_handlers() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved = list(root.handlers)
    yield root
    root.handlers[:] = saved


def test_configure_logging_swaps_console_handlers_once(
    settings: Settings, root_handlers: logging.Logger
) -> None:
    root = root_handlers
    console = logging.StreamHandler(io.StringIO())
    other = logging.NullHandler()
    root.handlers[:] = [console, other]

    configure_logging(settings.model_copy(update={"log_format": "text"}))
    assert root.handlers == [console, other]  # text: unchanged

    configure_logging(settings)
    configure_logging(settings)
    names = [h.get_name() for h in root.handlers]
    assert console not in root.handlers and other in root.handlers
    assert names.count(HANDLER_NAME) == 1


def test_log_format_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLP_LOG_FORMAT", "json")
    assert Settings(_env_file=None).log_format == "json"
    monkeypatch.setenv("MLP_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        Settings(_env_file=None)
