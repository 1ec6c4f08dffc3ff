"""Fault injection for the crash tests: ``PCDB_CRASH_AT=<point>`` kills this process with
SIGKILL when it reaches that point, as a power cut or an OOM kill would. Every step that
changes topology or data names its points; the crash matrix in tests/ kills at each of them and
checks that the next run finishes or undoes the interrupted work."""

from __future__ import annotations

import os
import signal

ENV = "PCDB_CRASH_AT"


def point(name: str, where: str | None = None) -> None:
    """Die here if the crash tests asked for it (``name``, or ``name:where`` for this one place,
    e.g. ``create:building:node2``); otherwise nothing."""
    asked = os.environ.get(ENV)
    if asked and (asked == name or (where is not None and asked == f"{name}:{where}")):
        os.kill(os.getpid(), signal.SIGKILL)
