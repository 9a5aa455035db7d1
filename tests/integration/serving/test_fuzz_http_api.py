"""The serving HTTP API fuzzed from its own OpenAPI schema (Schemathesis) on the real Ray Serve:
no 5xx, answers that conform to the schema (status codes, content types, bodies), schema-invalid
requests refused, and every 4xx with its reason in `detail`. Twice: an application without an
API key (every request reaches the feature parser) and one behind an API key (the key is
checked: Schemathesis also sends requests without it). Each is an application of this module's
own (own name and route prefix, a registry with one small model), deleted at the end.

Bounded: MAX_EXAMPLES requests per application, derandomized under CI=true. The requests tried
are printed as one line ("fuzz http api: ..."): see it with `pytest -rP` or `-s`.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis import GenerationMode, checks

from mlplatform.inference.serving.deployment import serving_status, start_serving, stop_serving
from mlplatform.settings import Settings
from tests.helpers import module_settings
from tests.integration.small_champion import register_small_champion

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 300  # per application, over all operations, fitting the schema or not
MAX_ROWS = 20
TRIED: Counter[str] = Counter()  # requests sent, by application and status class


def a_reason_on_every_4xx(ctx: object, response: schemathesis.Response, case: object) -> None:
    """Every refusal says why: a JSON body whose `detail` is a non-empty string."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict), f"{response.status_code} without a JSON object: {body!r}"
        detail = body.get("detail")
        assert isinstance(detail, str) and detail.strip(), (
            f"{response.status_code} without a reason in `detail`: {body!r}"
        )


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    a_reason_on_every_4xx,
]


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


def _deployed(s: Settings) -> Iterator[str]:
    url = start_serving(s)
    try:
        yield url
    finally:
        stop_serving(s)
    assert serving_status(s) == "NOT_DEPLOYED"


@pytest.fixture(scope="module")
def open_api(lake: Settings) -> Iterator[str]:
    yield from _deployed(lake)


@pytest.fixture(scope="module")
def keyed(lake: Settings) -> Iterator[tuple[str, str]]:
    """A second application, behind an API key: (address, key)."""
    key = f"key-{uuid.uuid4().hex}"
    s = lake.model_copy(
        update={
            "serve_app_name": f"{lake.serve_app_name}-keyed",
            "serve_route_prefix": f"{lake.serve_route_prefix}-keyed",
            "serve_api_key": SecretStr(key),
        }
    )
    for url in _deployed(s):
        yield url, key


def _cases(url: str, keyed: bool) -> st.SearchStrategy[schemathesis.Case]:
    """Requests for every operation of the schema the application serves: data that fits the
    schema and data that does not. Without a key configured, the key the schema documents is
    not asked for (the schema says "needed when MLP_SERVE_API_KEY is set"): its security
    requirements are left out."""
    raw = httpx.get(f"{url}/openapi.json", timeout=30).raise_for_status().json()
    if not keyed:
        for operation in (op for path in raw["paths"].values() for op in path.values()):
            operation.pop("security", None)
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=url, request_timeout=30)
    return st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )


# Schemathesis's strategies under a plain @given: its pytest loader from a fixture does not run
# on pytest 9.2 (it sets the removed Function._nodeid).
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _tried(app: str, response: schemathesis.Response) -> None:
    TRIED[app] += 1
    TRIED[f"{app} {response.status_code // 100}xx"] += 1


def _report() -> None:
    print(
        "fuzz http api: "
        + ", ".join(f"{name} {TRIED[name]}" for name in ("open", "keyed") if TRIED[name])
        + " requests tried ("
        + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()) if k.endswith("xx"))
        + ")"
    )


def test_the_api_fuzzed_from_its_schema(open_api: str) -> None:
    @FUZZ
    @given(case=_cases(open_api, keyed=False))
    def fuzz(case: schemathesis.Case) -> None:
        _tried("open", case.call_and_validate(checks=CHECKS))

    try:
        fuzz()
    finally:
        _report()


def test_the_api_behind_a_key_fuzzed_from_its_schema(keyed: tuple[str, str]) -> None:
    url, key = keyed

    @FUZZ
    @given(case=_cases(url, keyed=True), with_key=st.booleans())
    def fuzz(case: schemathesis.Case, with_key: bool) -> None:
        headers = {"X-API-Key": key} if with_key else None
        # ignored_auth: where the schema asks for the key, a request without it is refused.
        response = case.call_and_validate(headers=headers, checks=[*CHECKS, checks.ignored_auth])
        _tried("keyed", response)
        if not with_key and case.path != "/health":
            assert response.status_code == 401, (case.path, response.status_code)

    try:
        fuzz()
    finally:
        _report()
