"""Fault injection for the crash tests: ``PCDB_CRASH_AT=<point>`` kills this process with
SIGKILL when it reaches that point, as a power cut or an OOM kill would. Every step that
changes topology or data names its points; the crash matrix in tests/ kills at each of them and
checks that the next run finishes or undoes the interrupted work."""

from __future__ import annotations

import os
import signal

ENV = "PCDB_CRASH_AT"


def point(name: str) -> None:
    """Die here if the crash tests asked for it; otherwise nothing."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
