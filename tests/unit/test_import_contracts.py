"""The import contracts in pyproject.toml hold: one-way dependencies, no circles, infra reached
only from tasks and ops (the same check as `make lint`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlplatform.settings import PROJECT_DIR


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    completed = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    assert "0 broken" in completed.stdout
