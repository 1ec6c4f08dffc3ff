"""The sandbox's supervisor: what Azure's ZoneRedundant HA does by itself. When the primary has
been unreachable for ``sandbox.auto_failover_after``, it promotes the synchronous standby (a
forced failover: the old primary is fenced, then rewound into the new standby).

It never fights pcdb: while a pcdb process holds the sandbox's lock (a drill, an install, a
failover) it only watches. It fails over only when the standby was synchronous when last seen,
so no acknowledged write can be lost, and only when the standby itself is running.

Started by `pcdb sandbox up` (python -m pcdb.sandbox.supervisor SPEC), stopped by `down` and
`destroy`; its pid and last action are in <root>/supervisor.json, its log in supervisor.log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from pcdb.changes import Change
from pcdb.errors import PcdbError, SandboxError
from pcdb.process import alive
from pcdb.sandbox import storage
from pcdb.sandbox.engine import Sandbox, lock_holder
from pcdb.sql import query

CHECK_EVERY = 0.5  # seconds between health checks


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Supervisor:
    """One watch loop over one sandbox."""

    def __init__(self, sandbox: Sandbox, after: float, log=None):
        self.sandbox = sandbox
        self.after = after
        self.log = log or (lambda message: None)
        self.down_since: float | None = None
        self.synchronous = False  # the standby was synchronous at the last healthy check
        self.storage_checked = float("-inf")

    def primary_answers(self) -> bool:
        """The primary accepts a connection and a query within a second, and (seen from it) its
        standby is synchronous."""
        try:
            primary = self.sandbox.primary()
            with psycopg.connect(primary.conninfo(self.sandbox.admin_user), connect_timeout=1, autocommit=True) as conn:
                rows = conn.execute(query("sandbox.sql", "replication")).fetchall()
        except (psycopg.Error, SandboxError):
            return False
        self.synchronous = any(r[2] == "sync" for r in rows)
        return True

    def check_storage(self, now: float) -> str | None:
        """Azure's storage rule (read-only at 95 %, pcdb.sandbox.storage), every CHECK_EVERY
        seconds, and never while pcdb itself is changing the topology."""
        if now - self.storage_checked < storage.CHECK_EVERY or lock_holder(self.sandbox.root):
            return None
        self.storage_checked = now
        try:
            done = storage.enforce(self.sandbox)
        except (psycopg.Error, SandboxError) as exc:
            self.log(f"storage check: {str(exc).strip().splitlines()[0]}")
            return None
        if done:
            self.log(done)
        return done

    def check(self, now: float) -> str | None:
        """One look; returns what it did, if anything."""
        if self.sandbox.state.application != "primary":
            return None  # the service runs on the promoted replica (a region failover): it has no HA
        if self.primary_answers():
            self.down_since = None
            return self.check_storage(now)
        if self.down_since is None:
            self.down_since = now
            self.log(f"primary {self.sandbox.primary().name} does not answer")
            return None
        if now - self.down_since < self.after:
            return None
        busy = lock_holder(self.sandbox.root)
        if busy:
            return None  # pcdb itself is changing the topology (a drill, a failover): not ours to act
        if not self.synchronous:
            self.log("primary down, but its standby was not synchronous when last seen: no automatic failover "
                     "(acknowledged writes could be lost); run `pcdb sandbox up` after looking")
            self.down_since = now
            return None
        try:
            standby = self.sandbox.standby()
            if not standby.is_running():
                self.log(f"primary down and standby {standby.name} not running: nothing to promote")
                self.down_since = now
                return None
            outage = now - self.down_since
            result = self.sandbox.failover("forced")
        except PcdbError as exc:
            self.log(f"automatic failover failed: {exc}")
            self.down_since = now
            return None
        done = (f"automatic failover: {result['new_primary']} promoted after {outage:.1f}s without an answer "
                f"from {result['old_primary']}; {result['old_primary']} rejoined as synchronous standby")
        self.log(done)
        self.down_since = None
        return done


def pid_file(sandbox: Sandbox) -> Path:
    return sandbox.root / "supervisor.json"


def running(sandbox: Sandbox) -> int | None:
    try:
        pid = json.loads(pid_file(sandbox).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None
    return pid if alive(pid) else None


def start(sandbox: Sandbox, spec: str) -> Change:
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


def stop(sandbox: Sandbox, timeout: float = 30) -> bool:
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


def main() -> None:  # python -m pcdb.sandbox.supervisor SPEC ROOT
    from pcdb.config import load_environment

    spec, root = sys.argv[1], Path(sys.argv[2])
    sandbox = Sandbox(load_environment(spec), root=root)
    stopping = {"now": False}

    def on_term(*_):
        stopping["now"] = True
    signal.signal(signal.SIGTERM, on_term)

    def log(message: str) -> None:
        print(f"{_now()} {message}", flush=True)
        if message.startswith("automatic failover:"):
            sandbox.record_event("auto-failover", detail=message)
    supervisor = Supervisor(sandbox, sandbox.spec.auto_failover_after.total_seconds(), log)
    log(f"watching {root}: failover after {supervisor.after:g}s without a primary")
    while not stopping["now"]:
        supervisor.check(time.monotonic())
        time.sleep(CHECK_EVERY)
    log("stopped")


if __name__ == "__main__":
    main()
