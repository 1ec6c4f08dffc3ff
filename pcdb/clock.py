"""The one clock the runbooks read, so that a test can fix the time it runs at.

Runbooks ask ``clock.now()`` for the present moment instead of ``datetime.now``. Production code
never sets it; a test fixes it with ``with clock.fixed(at): ...`` and gets the same answer at
05:36 on a Wednesday as at 14:00 on a Sunday.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone


def _wall() -> datetime:
    return datetime.now(timezone.utc)


_source: Callable[[], datetime] = _wall


def now() -> datetime:
    """The present moment, timezone-aware (UTC)."""
    return _source()


def wall() -> datetime:
    """The machine's real time, never fixed: for what another party checks against its own clock
    (a token's lifetime, a certificate's validity), not for what a runbook decides."""
    return _wall()


@contextmanager
def fixed(at: datetime) -> Iterator[datetime]:
    """Within the block, ``now()`` answers ``at`` (timezone-aware)."""
    if at.tzinfo is None:
        raise ValueError("clock.fixed needs a timezone-aware time")
    global _source
    before, _source = _source, (lambda: at)
    try:
        yield at
    finally:
        _source = before
