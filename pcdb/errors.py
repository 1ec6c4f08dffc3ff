"""The errors pcdb raises: each says what failed, on what, and what to do next.

Errors from the boundaries (psycopg, subprocess, the Azure SDK) are translated once, where
they happen, into these classes with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass


class PcdbError(Exception):
    """A failure a DBA can act on; str() is the one-line message shown to the user."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an environment spec."""

    path: str
    message: str
    where: tuple[str, int] | int | None = None  # (file, line) or a line of the spec itself

    def render(self, file: str) -> str:
        if isinstance(self.where, tuple):
            place = f"{self.where[0]}:{self.where[1]}"
        else:
            place = f"{file}:{self.where}" if self.where else file
        return f"{place}: {self.path or '(top level)'}: {self.message}"


class ConfigError(PcdbError):
    """The environment spec is invalid; nothing has been changed."""

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        lines = [p.render(file) for p in problems[:self.SHOWN]]
        if len(problems) > self.SHOWN:
            lines.append(f"... and {len(problems) - self.SHOWN} more (fix these first: is this the right file?)")
        head = f"{file}: {len(problems)} problem(s) in the environment spec; nothing was changed"
        super().__init__("\n".join([head, *("  " + line for line in lines)]))

    SHOWN = 100  # a file of 20 000 unknown keys is named in a screenful, not 20 000 lines


class SecretError(PcdbError):
    """A secret is missing, unreadable or too weak."""


class SandboxError(PcdbError):
    """A sandbox server failed to start, stop, promote or answer in time."""


class TargetError(PcdbError):
    """A target operation failed (or cannot be done in the current state)."""


class TransientError(PcdbError):
    """A failure worth retrying (a server restarting, a lock held, a throttled API)."""


class ApprovalError(PcdbError):
    """The approval gate was rejected, incomplete or timed out; nothing was changed."""


# SQLSTATE classes that a retry can cure: connection exceptions, lock/serialization conflicts,
# operator intervention (a server shutting down or starting).
_TRANSIENT_SQLSTATE = ("08", "40", "55P03", "57P01", "57P02", "57P03", "53300")


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` may succeed; permissions, validation and bad secrets never are."""
    import psycopg  # local: errors.py must stay importable without a database driver loaded

    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, PcdbError):
        return False
    if isinstance(exc, psycopg.Error):
        state = getattr(exc, "sqlstate", None)
        if state is not None:
            return state.startswith(_TRANSIENT_SQLSTATE)
        # A failed connection carries no SQLSTATE (libpq reports it as text). What libpq does say:
        # whether the server took a password. It did: the server answered and refused the login
        # (a wrong password, a role that may not log in): never transient. It did not: refused,
        # reset, timed out, starting up: worth another try.
        pgconn = getattr(exc, "pgconn", None)
        if pgconn is not None and getattr(pgconn, "used_password", False):
            return False
        return isinstance(exc, psycopg.OperationalError)
    return isinstance(exc, (ConnectionError, TimeoutError))


class SlotTaken(PcdbError):
    """Another mutating runbook holds the environment: an expected outcome (the run ends as
    Refused, at info level), never a failure that pages people."""
