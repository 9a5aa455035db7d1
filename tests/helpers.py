"""Helpers that tests share (plain functions; fixtures stay in conftest.py): settings with
resources of a test module's own, a second instance of an infra service, and the environment
that hands settings to another process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sklearn.dummy import DummyClassifier

from mlplatform.registry import model_registry
from mlplatform.settings import Settings


def module_settings(isolated: Settings, name: str, **overrides: object) -> Settings:
    """The session's settings with a namespace, topics, subscription, landing folder and
    database of one test module's own (`name`), plus `overrides`."""
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    return isolated.model_copy(
        update={
            "namespace": f"{isolated.namespace}_{name}",
            "features_topic": f"{isolated.features_topic}-{tag}",
            "predictions_topic": f"{isolated.predictions_topic}-{tag}",
            "dead_letter_topic": f"{isolated.dead_letter_topic}-{tag}",
            "quarantine_topic": f"{isolated.quarantine_topic}-{tag}",
            "raw_events_topic": f"{isolated.raw_events_topic}-{tag}",
            "stream_subscription": tag,
            "landing_dir": isolated.resolved_landing_dir.parent / f"landing-{tag}",
            "database_url": isolated.resolved_database_url.replace(".db", f"-{tag}.db"),
            **overrides,
        }
    )


@contextmanager
def extra_service(name: str, s: Settings, what: str) -> Iterator[Settings]:
    """A second instance of an infra service (`name` in infra.services.SERVICES) with settings
    `s` (own ports and state), stopped however the test ends; one that does not start fails
    the test."""
    from infra.services import SERVICES, ServiceError, start, stop

    service = SERVICES[name]
    try:
        try:
            start(service, s)
        except ServiceError as error:
            pytest.fail(f"{what} did not start: {error}")
        yield s
    finally:
        stop(service, s)


def settings_env(s: Settings) -> dict[str, str]:
    """The MLP_ variables that make another process (a flow run) use settings `s`."""
    fields = (
        "namespace",
        "features_topic",
        "predictions_topic",
        "dead_letter_topic",
        "quarantine_topic",
        "stream_subscription",
        "landing_dir",
        "database_url",
        "commit_every_rows",
        "raw_events_topic",
    )
    return {f"MLP_{name.upper()}": str(getattr(s, name)) for name in fields}


def register_constant_model(s: Settings, constant: int = 0) -> model_registry.ModelVersion:
    """A registry version of a model that always answers class `constant` (0 or 1), trained on
    feature x, labels no and yes, snapshot 123."""
    model = DummyClassifier(strategy="constant", constant=constant).fit([[0.0], [1.0]], [0, 1])
    return model_registry.register(
        s,
        model,
        family="dummy",
        params={"constant": constant},
        metrics={"accuracy": 0.5},
        training_table="ml.features",
        training_snapshot_id=123,
        training_rows=2,
        feature_order=["x"],
        label_names=["no", "yes"],
    )
