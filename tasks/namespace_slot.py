"""One run at a time per namespace: a Prefect global concurrency limit per kind of run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from mlplatform.settings import Settings


@contextmanager
def one_run_per_namespace(settings: Settings, what: str = "preprocess") -> Iterator[None]:
    """Hold the namespace's slot for `what` (a Prefect global concurrency limit of one named
    `<what>-<namespace>`, made on first use): preprocess runs on one namespace wait for each
    other, since a run skips only the event ids committed before it started (flink_job.py);
    runs on other datasets go side by side. Table maintenance holds its own slot."""
    name = f"{what}-{settings.namespace}"
    # ObjectAlreadyExists: another run made it first.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with concurrency(name, occupy=1, strict=True):
        yield
