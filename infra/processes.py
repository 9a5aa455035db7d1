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


def listening_ports(pid: int) -> set[int]:
    """The TCP ports (IPv4 and IPv6) a process listens on: its socket inodes (/proc/<pid>/fd)
    matched against the kernel's socket tables."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = fd.readlink().name  # socket:[12345]
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                # local address, remote, state (0A: LISTEN), ..., inode (the tenth field)
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports
