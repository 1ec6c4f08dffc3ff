"""The console script: every command module registered on the one Typer app, in the order
`pcdb --help` lists them (the install first, then the runbooks as a DBA meets them)."""

from __future__ import annotations

import importlib
import logging
import os

from cli.common import app

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
    app()
