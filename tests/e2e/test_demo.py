"""The demo end to end, as a user runs it, with a small N: every count must reconcile. It runs
on a namespace, topics, landing folder and database of its own (MLP_ variables, which the demo
hands to its deployment runs): the default ones are the user's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
    summary = completed.stdout[completed.stdout.find("=== demo summary ===") :]
    assert completed.returncode == 0, summary or completed.stderr[-3000:]
    assert "all counts reconcile" in summary
    assert summary.count(" ok") == 5
