"""The demo end to end, as a user runs it, with a small N: Iris and wine through the whole
pipeline at the same time, on the same database, broker, Prefect and Ray, every count of each
reconciled and each with a champion of its own. It runs on namespaces, topics, landing folders
and a database of its own (MLP_ variables, which the demo hands to its deployment runs): the
default ones are the user's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlplatform.registry import model_registry
from mlplatform.settings import PROJECT_DIR, Settings
from tests.helpers import module_settings, settings_env

pytestmark = pytest.mark.e2e


def test_demo_counts_reconcile(isolated: Settings, deployments: None) -> None:
    own = module_settings(isolated, "demo")
    completed = subprocess.run(
        [sys.executable, "-m", "mlplatform.ops.demo", "--rows", "300", "--malformed", "14"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **settings_env(own)},
    )
    summary = completed.stdout[completed.stdout.find("=== demo summary") :]
    assert completed.returncode == 0, summary or completed.stderr[-3000:]
    for dataset in ("iris", "wine"):
        assert f"=== demo summary: {dataset} ===" in summary
    assert summary.count("all counts reconcile") == 2
    assert summary.count(" ok") == 10
    champions = model_registry.list_models(own)
    assert set(champions) == {"iris", "wine"}
    for name, version in champions.items():
        champion = model_registry.get_version(own.for_model(name), version)
        assert (champion.dataset, champion.stage) == (name, "champion")
        assert champion.feature_order == own.for_dataset(name).feature_columns
