"""infra.processes: liveness and the process table, on real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from infra.processes import alive, running


def test_a_running_child_is_alive_and_listed_with_its_argv_and_parent() -> None:
    marker = f"mlp-test-{uuid.uuid4().hex}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        assert alive(child.pid)
        found = [p for p in running() if marker in p.argv]
        assert [(p.pid, p.parent) for p in found] == [(child.pid, os.getpid())]
        assert marker in found[0].command_line
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)


def test_a_child_that_exited_unreaped_is_not_alive_nor_listed() -> None:
    marker = f"mlp-test-{uuid.uuid4().hex}"
    child = subprocess.Popen([sys.executable, "-c", "pass", marker])
    deadline = time.monotonic() + 10
    while alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(f"/proc/{child.pid}"), "the zombie was reaped before the check"
    assert not alive(child.pid)
    assert child.pid not in {p.pid for p in running()}
    child.wait()
