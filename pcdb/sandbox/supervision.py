"""Starting and stopping a sandbox's supervisor (the process of pcdb.sandbox.supervisor), and
finding it again: what ``sandbox up`` and ``sandbox down`` do with it. Apart from the supervisor
itself, which imports the sandbox engine it watches (the engine only starts and stops it, so
``sandbox`` here is any object with the engine's root and spec: no import back).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pcdb import clock
from pcdb.changes import Change
from pcdb.process import alive


def _now() -> str:
    return clock.now().isoformat(timespec="milliseconds")


def pid_file(sandbox) -> Path:
    return sandbox.root / "supervisor.json"


def running(sandbox) -> int | None:
    try:
        pid = json.loads(pid_file(sandbox).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None
    return pid if alive(pid) else None


def start(sandbox, spec: str) -> Change:
    """Leave a supervisor running for this sandbox (idempotent)."""
    after = sandbox.spec.auto_failover_after.total_seconds()
    if after <= 0:
        return Change("supervisor", str(sandbox.root), "unchanged", notes=("auto_failover_after is 0: off",))
    pid = running(sandbox)
    if pid:
        return Change("supervisor", str(sandbox.root), "unchanged", notes=(f"pid {pid}",))
    log = open(sandbox.root / "supervisor.log", "ab")
    try:
        child = subprocess.Popen([sys.executable, "-m", "pcdb.sandbox.supervisor", spec, str(sandbox.root)],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    finally:
        log.close()
    pid_file(sandbox).write_text(json.dumps({"pid": child.pid, "since": _now(), "after_seconds": after}) + "\n")
    return Change("supervisor", str(sandbox.root), "started",
                  notes=(f"pid {child.pid}: promotes the standby after {after:g}s without a primary",))


def stop(sandbox, timeout: float = 30) -> bool:
    """Stop the supervisor (it finishes what it is doing first); True when one was running."""
    pid = running(sandbox)
    pid_file(sandbox).unlink(missing_ok=True)
    if not pid:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True
