"""A command's temporary Prefect server dies with the command, however the command ends: a
`pcdb install` SIGKILLed alone (as the OOM killer or `kill -9 PID` would) once left its
uvicorn running, orphaned, for over an hour."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_target

pytestmark = pytest.mark.postgres


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tail(file, size: int = 3000) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")[-size:]


def test_a_sigkilled_install_leaves_no_prefect_server_running(prefect_harness):
    target = new_target()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}   # no server configured
    env.update(PREFECT_HOME=tempfile.mkdtemp(prefix="pcdb-prefect-"),
               PCDB_ORCHESTRATOR_HOME=tempfile.mkdtemp(prefix="pcdb-orch-"))
    said = tempfile.TemporaryFile()          # what the command says, for a failure's message
    cli = subprocess.Popen([sys.executable, "-m", "cli", "install", "--env", str(target.env_path), "--dry-run"],
                           env=env, stdout=subprocess.DEVNULL, stderr=said)
    deadline = time.monotonic() + 240
    server, port = None, None
    while port is None:                                       # the command's server answers
        assert time.monotonic() < deadline and cli.poll() is None, \
            f"the command started no server (exit status {cli.poll()}): {tail(said)}"
        for child in children_of(cli.pid):
            args = cmdline(child)
            if "uvicorn" in args and "--port" in args:
                server, candidate = child, args[args.index("--port") + 1]
                try:
                    httpx.get(f"http://127.0.0.1:{candidate}/api/health", timeout=1)
                    port = candidate
                except httpx.HTTPError:
                    pass
        time.sleep(0.2)
    os.kill(cli.pid, signal.SIGKILL)                          # the command alone, not its group
    cli.wait(timeout=30)
    deadline = time.monotonic() + 10
    while running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = running(server)
    if alive:
        os.kill(server, signal.SIGKILL)
    assert not alive, f"the temporary server {server} outlived its command by 10 s"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)


def test_a_server_credential_left_in_the_shell_does_not_lock_the_command_out_of_its_own_server(tmp_path):
    """A shell that holds PREFECT_SERVER_API_AUTH_STRING (another server's) and no client
    credential: the command's temporary server once required that credential while its own
    client sent none, and every command failed with 401 Unauthorized."""
    target = new_target()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}   # no server configured
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PCDB_ORCHESTRATOR_HOME=str(tmp_path / "orch"),
               PREFECT_SERVER_API_AUTH_STRING="pcdb:another-servers-credential")
    done = subprocess.run([sys.executable, "-m", "cli", "install", "--env", str(target.env_path), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Unauthorized" not in done.stderr
