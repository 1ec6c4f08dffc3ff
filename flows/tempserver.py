"""The temporary Prefect server of one interactive command, which dies with that command.

When no persistent server runs, Prefect starts a temporary one (uvicorn, about 300 MB) and stops
it at interpreter exit. A command killed outright (``kill -9``, the OOM killer) runs no exit
handler, and the server was once left orphaned for over an hour. pcdb therefore starts the
temporary server itself, through a launcher that asks the kernel to send it SIGTERM when its
parent dies (``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``), and points Prefect at it.

``python -m flows.tempserver PARENT_PID -- COMMAND...`` is that launcher.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """Ask for SIGTERM when the parent dies; exit at once when it has already died (the window
    between fork and prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        sys.exit(0)


def tied_server_class():
    """Prefect's ``SubprocessASGIServer`` running pcdb's server application (flows/serverapp.py)
    through the launcher, so the server dies with this process (the test harness uses it too)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            import subprocess

            import prefect

            env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
                   "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}       # no telemetry, as the persistent server
            return subprocess.Popen(
                [sys.executable, "-m", "flows.tempserver", str(os.getpid()), "--",
                 sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "flows.serverapp:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"], env=env)
    return TiedServer


def start(timeout: float | None = None) -> str:
    """Start a temporary server tied to this process and return its API URL (Prefect's own
    start-up checks, port choice and exit handler are kept)."""
    from prefect.settings import get_current_settings

    from pcdb.prefectdb import seed_database

    database = get_current_settings().server.database.connection_url
    database = database.get_secret_value() if database else ""
    if database.startswith("sqlite+aiosqlite:///"):     # a new PREFECT_HOME's database: already migrated
        seed_database(Path(database.removeprefix("sqlite+aiosqlite:///")))
    server = tied_server_class()()
    server.start(timeout=int(timeout) if timeout else None)
    return server.api_url


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m flows.tempserver PARENT_PID -- COMMAND...")
    die_with(int(argv[0]))
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
