"""The persistent-server tests' helper: an environment spec whose server and worker they drive
through the pcdb CLI, run as a separate process as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from pcdb.config import DEPLOYMENTS
from pcdb.sandbox.engine import _free_port
from tests.conftest import sandbox_root, wait_until  # noqa: F401 - the service tests import it from here


class Service:
    """One environment spec whose persistent server and worker the tests drive."""

    def __init__(self, folder: Path, name: str = "svc", extra: str = "", port: int | None = None,
                 parent: Path | None = None, health: str = "    every: 0s\n", auth_file: Path | None = None):
        self.folder = folder
        self.auth_file = auth_file       # production: the credential comes from a file (never generated)
        self.home = folder / "orch"
        self.port = port or _free_port(set())
        self.spec = folder / f"{name}.yaml"
        self.spec.write_text(
            f"extends: {parent or DEPLOYMENTS / 'local.yaml'}\nname: {name}\n"
            f"sandbox:\n  root: {sandbox_root(folder, 'sb-' + name)}\n  fsync: false\n  start_timeout: 60s\n"
            f"reports_dir: {folder / 'reports'}\n"
            # The worker asks every second (Prefect's default: 10 s), so runs start without a wait.
            f"orchestrator:\n  home: {self.home}\n  port: {self.port}\n  worker_poll: 1s\n{extra}"
            # No health run a minute in the background of these tests (its own test starts one).
            f"monitoring:\n  health:\n{health}")
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.extra_env: dict[str, str] = {}     # for the CLI, and through it the server and the worker

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PCDB_ORCHESTRATOR"))}
        env["PREFECT_HOME"] = str(self.folder / "prefect-client")
        return {**env, **self.extra_env}

    def pcdb(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                                env=self.env(), timeout=timeout, cwd=self.folder, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"pcdb {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def json(self, *args: str, check: bool = True) -> dict | list:
        return json.loads(self.pcdb(*args, "--json", check=check).stdout)

    @contextmanager
    def api(self):
        """Prefect's client pointed at this server (in the test process). The events worker of
        the test process is bound to the API URL it started with: it is drained before and
        after, so no event of this server's block goes to the session's test server, or back."""
        from prefect.events.worker import EventsWorker
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        EventsWorker.drain_all(timeout=30)
        try:
            with temporary_settings({PREFECT_API_URL: self.url, PREFECT_API_AUTH_STRING: self.auth}):
                yield
        finally:
            EventsWorker.drain_all(timeout=30)

    @property
    def auth(self) -> str:
        """The API's credential, as `pcdb server up` generated it (0600 in the home)."""
        return (self.auth_file or self.home / "secrets" / "prefect-auth").read_text().strip()

    def server_pid(self) -> int:
        return json.loads((self.home / "server.json").read_text())["pid"]


