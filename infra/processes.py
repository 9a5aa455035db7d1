"""The processes on this machine, read from /proc (Linux). A process that was killed but not
yet reaped by its parent (a zombie) counts as gone everywhere here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    parent: int
    argv: tuple[str, ...]

    @property
    def command_line(self) -> str:
        return " ".join(self.argv)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: state, parent pid, ..."""
    return (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()


def alive(pid: int) -> bool:
    """A running process (not a zombie)."""
    try:
        return _stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def running() -> list[Process]:
    """Every running process (zombies and kernel threads left out)."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = _stat(int(entry.name))
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if stat[0] != "Z" and argv[0]:
                args = tuple(a.decode(errors="replace") for a in argv if a)
                found.append(Process(int(entry.name), int(stat[1]), args))
    return found
