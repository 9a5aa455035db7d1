"""The serving HTTP API fuzzed from its own OpenAPI schema with Schemathesis, as a program:
`python -m tests.integration.serving.http_fuzzer URL` (the API key, where the application has
one, in the environment variable FUZZ_API_KEY, never on the command line).

It runs in a process of its own, away from the test process's threads: Hypothesis parses source
files to describe lambdas, and CPython 3.11's AST constructor keeps one recursion counter per
interpreter, so a parse racing another thread's fails with a spurious SystemError
(python/cpython#106905) that Hypothesis then reports as a flaky test.

Checks: no 5xx, answers that conform to the schema (status codes, content types, bodies),
schema-invalid requests refused, every 4xx with its reason in `detail`; behind a key, a request
without it is refused (401). Prints one line of counts ("fuzz http api: ...") and exits 1 on
the first failing example (Hypothesis's report on stderr).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks
from schemathesis.config import ChecksConfig

MAX_EXAMPLES = 300  # per application, over all operations, fitting the schema or not


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

# Refusals that count for schema-invalid data: Schemathesis's list without 5xx, plus 413, the
# documented answer to more rows than MLP_SERVE_MAX_ROWS, which the API checks before the rows'
# contents (a cheap size limit first, as servers do).
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

# Schemathesis's strategies under a plain @given (its pytest loader does not run on pytest 9.2).
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    database=None,
    suppress_health_check=list(HealthCheck),
)


def cases(url: str, keyed: bool) -> st.SearchStrategy[schemathesis.Case]:
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
    schema.config.checks = ChecksConfig.from_dict(
        {"negative_data_rejection": {"expected-statuses": REFUSALS}}
    )
    return st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )


def fuzz(url: str, key: str | None) -> Counter[str]:
    """Requests sent, by status class ("2xx", ...) and in all ("requests")."""
    tried: Counter[str] = Counter()

    @FUZZ
    @given(case=cases(url, keyed=key is not None), with_key=st.booleans())
    def one(case: schemathesis.Case, with_key: bool) -> None:
        if key is None:
            response = case.call_and_validate(checks=CHECKS)
        else:
            headers = {"X-API-Key": key} if with_key else None
            # ignored_auth: where the schema asks for the key, a request without it is refused.
            response = case.call_and_validate(
                headers=headers, checks=[*CHECKS, checks.ignored_auth]
            )
            if not with_key and case.path != "/health":
                assert response.status_code == 401, (case.path, response.status_code)
        tried.update(["requests", f"{response.status_code // 100}xx"])

    try:
        one()
    finally:
        print(
            f"fuzz http api: {tried['requests']} requests tried ("
            + ", ".join(f"{k} {v}" for k, v in sorted(tried.items()) if k.endswith("xx"))
            + ")",
            flush=True,
        )
    return tried


if __name__ == "__main__":
    # A failing example raises: exit status 1, Hypothesis's report on stderr.
    fuzz(sys.argv[1], os.environ.get("FUZZ_API_KEY"))
