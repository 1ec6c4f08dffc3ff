"""The console script: every command module registered on the one Typer app, in the order
`pcdb --help` lists them (the install first, then the runbooks as a DBA meets them)."""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
from typing import NoReturn

from cli.common import app, backlog_abandoned

COMMAND_MODULES = ("install", "runbooks", "health", "incident", "decisions", "history", "server", "sandbox", "config")
for _module in COMMAND_MODULES:
    importlib.import_module(f"cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    # Prefect's log shipper prints "--- Error logging to API ---" straight onto our output
    # when the server is gone; the run's outcome is reported by us, once, in one line.
    logging.raiseExceptions = False
    # pcdb's own loggers (e.g. pcdb.azure's progress of long-running operations) in the run logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pcdb")
    try:
        app()
    except SystemExit as exc:
        leave(exc.code)
    leave(0)


def leave(code: object) -> NoReturn:
    """End the command as the interpreter ends a process, without tearing its modules down.

    A command that ran a flow has Prefect, pydantic and their models loaded; Python's own
    teardown of them took 0.25-0.4 s of every command (docs/benchmarks.md, P2). Everything a
    normal exit does that anyone sees still happens, in the same order: the threads' exit hooks
    (Prefect's log and event shippers drain there) and the wait for non-daemon threads, then
    the atexit functions (logging's flush among them), then the standard streams are flushed.
    When the run's server was found gone, Prefect's workers are not waited for (cli/common.py,
    ``server_lost``).
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:   # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    if not backlog_abandoned():   # when the server is gone, nothing Prefect's workers hold can reach it
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
        atexit._run_exitfuncs()   # logging.shutdown among them: Prefect's log handler sends what it holds
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe (`pcdb history | head`): nothing more to say
            pass
    os._exit(status)
