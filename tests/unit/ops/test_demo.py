"""The demo hands where its data lives to its deployment runs, and no password."""

from __future__ import annotations

import pytest

from mlplatform.ops.demo import placement_env

pytestmark = pytest.mark.unit


def test_the_placement_variables_set_go_with_the_runs() -> None:
    environ = {
        "MLP_NAMESPACE": "it_1",
        "MLP_FEATURES_TOPIC": "persistent://public/default/f-1",
        "MLP_DATABASE_URL": "sqlite:////tmp/p.db",
        "MLP_SERVE_API_KEY": "k",
        "PATH": "/bin",
    }
    assert placement_env(environ) == {
        "MLP_NAMESPACE": "it_1",
        "MLP_FEATURES_TOPIC": "persistent://public/default/f-1",
        "MLP_DATABASE_URL": "sqlite:////tmp/p.db",
    }
    assert placement_env({}) == {}


def test_a_database_url_with_a_password_stays_out() -> None:
    environ = {
        "MLP_NAMESPACE": "it_1",
        "MLP_DATABASE_URL": "postgresql+psycopg2://mlp:secret@127.0.0.1:5432/platform",
        "MLP_CATALOG_URL": "postgresql+psycopg2://mlp@127.0.0.1:5432/catalog",
    }
    env = placement_env(environ)
    assert env == {
        "MLP_NAMESPACE": "it_1",
        "MLP_CATALOG_URL": "postgresql+psycopg2://mlp@127.0.0.1:5432/catalog",
    }
    assert "secret" not in repr(env)
