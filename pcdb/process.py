"""Processes pcdb started and must find again (the Prefect server, workers, the supervisor)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """The process runs (a zombie, an exited child not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return fields is None or fields[0] != "Z"


def started_at(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat's 22nd field): with
    its pid, what names it for good (a pid is reused, that pair never). None once it has ended."""
    fields = _stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[19]


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command's name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def machine_memory() -> int:
    """Bytes of memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
