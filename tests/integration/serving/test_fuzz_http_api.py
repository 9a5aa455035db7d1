"""The serving HTTP API fuzzed from its own OpenAPI schema (Schemathesis) on the real Ray Serve,
by `http_fuzzer` in a process of its own (see there for why and for the checks). Twice: an
application without an API key (every request reaches the feature parser) and one behind an API
key (Schemathesis also sends requests without it). Each is an application of this module's own
(own name and route prefix, a registry with one small model), deleted at the end.

Bounded: http_fuzzer.MAX_EXAMPLES requests per application, derandomized under CI=true. The
counts are printed as one line ("fuzz http api: ..."): see them with `pytest -rP` or `-s`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydantic import SecretStr

from mlplatform.inference.serving.deployment import serving_status, start_serving, stop_serving
from mlplatform.settings import Settings
from tests.helpers import module_settings
from tests.integration.small_champion import register_small_champion

pytestmark = pytest.mark.integration

MAX_ROWS = 20
FUZZ_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def lake(isolated: Settings) -> Settings:
    """Settings of this module's own, with a registry whose champion is a small tree over the
    dataset's features (no training run needed)."""
    tag = uuid.uuid4().hex[:6]
    s = module_settings(
        isolated,
        "fuzzhttp",
        serve_max_rows=MAX_ROWS,
        serve_app_name=f"model-fuzz-{tag}",
        serve_route_prefix=f"/fuzz-{tag}",
        serve_min_replicas=1,
        serve_max_replicas=1,
    )
    register_small_champion(s)
    return s


@contextmanager
def _deployed(s: Settings) -> Iterator[str]:
    url = start_serving(s)
    try:
        yield url
    finally:
        stop_serving(s)
    assert serving_status(s) == "NOT_DEPLOYED"


def _fuzz(url: str, key: str | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FUZZ_API_KEY"}
    if key is not None:
        env["FUZZ_API_KEY"] = key
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.serving.http_fuzzer", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=FUZZ_TIMEOUT_S,
    )
    print(done.stdout.strip())
    assert done.returncode == 0, f"the fuzzer found a failing request:\n{done.stderr[-8000:]}"
    assert "fuzz http api: 0 requests" not in done.stdout, done.stdout


def test_the_api_fuzzed_from_its_schema(lake: Settings) -> None:
    with _deployed(lake) as url:
        _fuzz(url)


def test_the_api_behind_a_key_fuzzed_from_its_schema(lake: Settings) -> None:
    """A second application, behind an API key."""
    key = f"key-{uuid.uuid4().hex}"
    s = lake.model_copy(
        update={
            "serve_app_name": f"{lake.serve_app_name}-keyed",
            "serve_route_prefix": f"{lake.serve_route_prefix}-keyed",
            "serve_api_key": SecretStr(key),
        }
    )
    with _deployed(s) as url:
        _fuzz(url, key)
