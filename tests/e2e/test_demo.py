"""The demo end to end, as a user runs it, with a small N: every count must reconcile."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlplatform.settings import PROJECT_DIR, Settings

pytestmark = pytest.mark.e2e


def test_demo_counts_reconcile(services: Settings, deployments: None) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mlplatform.ops.demo", "--rows", "300", "--malformed", "14"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = completed.stdout[completed.stdout.find("=== demo summary ===") :]
    assert completed.returncode == 0, summary or completed.stderr[-3000:]
    assert "all counts reconcile" in summary
    assert summary.count(" ok") == 5
