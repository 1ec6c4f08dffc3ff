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
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def machine_memory() -> int:
    """Bytes of memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
