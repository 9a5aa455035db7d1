"""The live view of the real-time path as a Prefect artifact that updates while a run goes on."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.artifacts import create_markdown_artifact

from mlplatform.ops.live_view import live_view, markdown
from mlplatform.settings import Settings

logger = logging.getLogger(__name__)


def artifact_key(s: Settings) -> str:
    """One key per namespace: each update is a new version of the same artifact."""
    return f"realtime-{s.namespace}".replace("_", "-").lower()


@contextmanager
def live_artifact(s: Settings, every_s: float) -> Iterator[None]:
    """Publish the live view every `every_s` seconds (over the last `every_s`) while the block
    runs, in the caller's flow run; a failed look is logged, never fatal."""
    stop = threading.Event()
    context = contextvars.copy_context()  # the flow run the artifacts belong to

    def publish() -> None:
        view = live_view(s, window_s=every_s)
        create_markdown_artifact(
            markdown(view, s.namespace),
            key=artifact_key(s),
            description="Rates, lag and raw event -> prediction latency, updated while it runs",
        )

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                context.run(publish)
            except Exception as error:  # noqa: BLE001 - a view is not worth the run
                logger.warning("the live view failed: %s", error)

    thread = threading.Thread(target=loop, name="live-view", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
