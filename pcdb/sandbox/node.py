"""One PostgreSQL server of the sandbox: its folders, its process, its connection."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pcdb.errors import SandboxError
from pcdb.process import alive
from pcdb.sandbox import proc

# `pg_ctl -w` looks at the server every 100 ms, so a fast stop (about 30 ms here) and a promotion
# each came back up to 100 ms after they were done: on the path of every failover, drill, restore
# test and sandbox stop. The node asks pg_ctl not to wait and looks itself, every 5 ms, at signs
# that are sound on their own (pg_ctl's are not, see stop and promote).
LOOK_EVERY = 0.005


def conf_line(name: str, value: object) -> str:
    """A postgresql.conf line with the value quoted as the server expects."""
    text = str(value).replace("'", "''")
    return f"{name} = '{text}'\n"


@dataclass(frozen=True)
class Node:
    """A server's folders and port. ``home`` holds data/, run/ (socket), log/ and server.log."""

    name: str
    home: Path
    port: int
    bindir: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def startup_log(self) -> Path:
        return self.home / "server.log"

    def prog(self, name: str) -> str:
        return str(self.bindir / name)

    def exists(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def pid_file(self) -> list[str]:
        """The lines of postmaster.pid (PID, folder, start time, port, socket folder, listen
        address, shared memory key, status), none when there is no file. Raises PermissionError
        when it is not ours to read."""
        try:
            return (self.data / "postmaster.pid").read_text().split("\n")
        except FileNotFoundError:
            return []

    def postmaster_pid(self) -> int | None:
        """The PID in postmaster.pid (made positive: a single-user server writes it negated), or
        None when there is none (no file, being written, 0). Raises PermissionError when the file
        is not ours to read."""
        if not self.exists():
            return None
        try:
            pid = abs(int(self.pid_file()[0]))
        except (ValueError, IndexError):  # being written: pg_ctl finds no server either
            return None
        return pid or None

    def is_running(self) -> bool:
        """`pg_ctl status`'s own test, without starting a process for it (thousands of times in a
        day's checks, each a fork of this process as the server user): the PID in postmaster.pid
        (negative for a single-user server) is a live process."""
        try:
            pid = self.postmaster_pid()
        except OSError:                  # not ours to read: ask pg_ctl, as the server user
            result = proc.run([self.prog("pg_ctl"), "-D", str(self.data), "status"], timeout=10,
                              what=f"status of {self.name}", check=False)
            return result.returncode == 0
        if pid is None or pid in (os.getpid(), os.getppid()):
            return False
        # kill(pid, 0), as pg_ctl does, and deliberately not pcdb.process.alive, which counts a
        # zombie as gone: a SIGKILLed postmaster stays a zombie while its backends still hold the
        # cluster, and counting it stopped made `sandbox up` start the node too early ("pg_ctl:
        # another server might be running"; tests/integration/test_sandbox_lifecycle.py's
        # test_after_a_crash_up_restarts_the_servers_and_keeps_the_data, 2026-12-04).
        try:
            os.kill(pid, 0)
        except OSError:                  # gone (or, as pg_ctl counts it, not ours to signal)
            return False
        return True

    def start(self, timeout: float) -> None:
        """Start and wait until it accepts connections, or raise naming the log file and the
        server's own last FATAL or PANIC line (the logging collector writes into log/).

        `pg_ctl start -w` decides, and the node looks itself every 5 ms at the sign pg_ctl reads
        every 100 ms (a start took 0.114 s through pg_ctl, 0.068 s looked at this way): the
        postmaster.pid of a postmaster started now (not the PID a stale file named before, the
        process alive) whose status line says it is up ("ready", or "standby" for a standby that
        takes no connections). Nothing else starts the node meanwhile: the sandbox's lock."""
        try:
            stale = self.postmaster_pid()
        except OSError:                  # not ours to read: pg_ctl alone decides
            stale, watch = None, False
        else:
            watch = True
        logged = self._log_sizes()

        def up() -> bool:
            try:
                lines = self.pid_file()
                pid = int(lines[0])
            except (OSError, ValueError, IndexError):
                return False
            return len(lines) >= 8 and lines[7].strip() in ("ready", "standby") and 0 < pid != stale and alive(pid)

        try:
            proc.run([self.prog("pg_ctl"), "-D", str(self.data), "-l", str(self.startup_log), "-w",
                      "-t", str(int(timeout)), "start"], timeout=timeout + 5,
                     what=f"start {self.name}", log=self.startup_log, done_when=up if watch else None)
        except SandboxError as exc:
            said = self.last_fatal(logged)
            if said is None:
                raise
            raise SandboxError(f"{exc}; the server said: {said}") from None

    def _log_sizes(self) -> dict[Path, int]:
        """How far each of the server's log files goes now (the start-up log and log/)."""
        logs = [self.startup_log, *(sorted(self.log_dir.glob("*.log")) if self.log_dir.exists() else [])]
        return {log: log.stat().st_size for log in logs if log.exists()}

    def last_fatal(self, since: dict[Path, int] | None = None) -> str | None:
        """The last FATAL or PANIC line of the server's log files, if any; with ``since`` (from
        `_log_sizes`), only of what was written after it: a start that fails says its own reason,
        not an earlier shutdown's."""
        since = since or {}
        lines = []
        for log in sorted(self._log_sizes()):
            with open(log, "rb") as text:
                text.seek(since.get(log, 0))
                lines += [line for line in text.read().decode(errors="replace").splitlines()
                          if " FATAL: " in line or " PANIC: " in line or line.startswith(("FATAL: ", "PANIC: "))]
        if not lines:
            return None
        return lines[-1].split("FATAL: ", 1)[-1].split("PANIC: ", 1)[-1].strip()

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server and wait until its postmaster has exited; a fast stop that does not end
        within ``timeout`` is escalated to immediate.

        Not pg_ctl's wait: it counts the server stopped once postmaster.pid is gone, and the
        postmaster removes that file in its exit callbacks, a moment *before* the process ends
        (a 5 ms look saw the postmaster still running right after `sandbox down`, 2026-12-05). So
        the node reads the postmaster's PID first and waits until that process is gone (exited:
        a postmaster exits only after its children, and a zombie holds no memory)."""
        if not self.is_running():
            return
        try:
            pid = self.postmaster_pid()
        except OSError:
            pid = None
        try:
            if pid is None:              # not ours to read: pg_ctl waits, in its 100 ms steps
                proc.run([self.prog("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t",
                          str(int(timeout)), "stop"], timeout=timeout + 5, what=f"stop {self.name}",
                         log=self.startup_log)
                return
            proc.run([self.prog("pg_ctl"), "-D", str(self.data), "-m", mode, "-W", "stop"], timeout=30,
                     what=f"stop {self.name}", log=self.startup_log)
            self.wait(lambda: not alive(pid) and not self.is_running(), f"a {mode} stop", timeout,
                      interval=LOOK_EVERY)
        except SandboxError:
            if mode == "immediate":
                raise
            self.stop("immediate", timeout)

    def promote(self, timeout: float, user: str | None = None) -> None:
        """Promote the standby and wait until it accepts writes.

        With ``user`` (an admin role that may connect over the node's socket) the node asks the
        server itself, every 5 ms, on one session: `pg_is_in_recovery()` turns false when the
        startup process marks recovery done, which is when writes are accepted. Without it,
        `pg_ctl promote -w` waits for pg_control's "in production", written a moment before that,
        in 100 ms steps."""
        if user is None:
            proc.run([self.prog("pg_ctl"), "-D", str(self.data), "-w", "-t", str(int(timeout)),
                      "promote"], timeout=timeout + 5, what=f"promote {self.name}", log=self.startup_log)
            return
        proc.run([self.prog("pg_ctl"), "-D", str(self.data), "-W", "promote"], timeout=30,
                 what=f"promote {self.name}", log=self.startup_log)
        self.wait_writable(user, "promotion", timeout)

    def wait_writable(self, user: str, what: str, timeout: float, interval: float = LOOK_EVERY) -> None:
        """Wait until the server accepts writes: `pg_is_in_recovery()` false, asked every
        ``interval`` on one session over the node's socket (a session sees recovery end; a new
        connection for each look would fork a backend each time). A session that cannot be opened
        (the server still starting, or not yet consistent) is tried again every 50 ms. Each look is
        a statement in the server's log: a long wait (a restore's recovery) asks less often."""
        session: list[psycopg.Connection] = []
        next_try = [0.0]

        def writable() -> bool:
            try:
                if not session:
                    if time.monotonic() < next_try[0]:
                        return False
                    next_try[0] = time.monotonic() + 0.05
                    session.append(self.connect(user, timeout=5))
                return not session[0].execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]
            except psycopg.Error:
                while session:           # broken: the next look opens another
                    session.pop().close()
                raise

        try:
            self.wait(writable, what, timeout, interval=interval)
        finally:
            for conn in session:
                conn.close()

    def reload(self) -> None:
        proc.run([self.prog("pg_ctl"), "-D", str(self.data), "reload"], timeout=10,
                 what=f"reload {self.name}", log=self.startup_log)

    def conninfo(self, user: str, dbname: str = "postgres") -> str:
        """Admin connection over the node's own unix socket (trust, folder 0700)."""
        return psycopg.conninfo.make_conninfo(host=str(self.run_dir), port=self.port, user=user,
                                              dbname=dbname, application_name="pcdb")

    def connect(self, user: str, dbname: str = "postgres", timeout: float = 10) -> psycopg.Connection:
        try:
            return psycopg.connect(self.conninfo(user, dbname), autocommit=True,
                                   connect_timeout=max(1, int(timeout)))
        except psycopg.OperationalError as exc:
            raise SandboxError(f"cannot connect to {self.name} (port {self.port}): "
                               f"{str(exc).strip().splitlines()[0]}; {self._where_to_look()}") from exc

    def _where_to_look(self) -> str:
        """A file that holds why, or what the node's folder says when there is none."""
        if not self.exists():
            return (f"{self.name} is not made yet ({self.data} holds no server): `pcdb install` or "
                    "`pcdb sandbox up` makes it")
        logs = [p for p in (self.startup_log, *sorted(self.log_dir.glob("*.log"))[-1:]) if p.exists()]
        if not logs:
            return f"{self.name} has never been started (no server log yet)"
        return "see " + " and ".join(str(p) for p in logs)

    def write_node_conf(self, settings: dict[str, object]) -> None:
        """Write the per-node settings file included at the end of postgresql.conf."""
        text = "# Per-node settings written by pcdb; never copied between nodes.\n"
        text += "".join(conf_line(k, v) for k, v in settings.items())
        proc.write_file(self.data / "node.conf", text, mode=0o600)

    def wait(self, predicate, what: str, timeout: float, interval: float = 0.05):
        """Poll ``predicate()`` until it returns a truthy value or the deadline passes."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except (psycopg.Error, SandboxError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                extra = f" (last error: {last_error})" if last_error else ""
                raise SandboxError(f"{self.name}: {what} did not happen within {timeout:.0f}s"
                                   f"{extra}; see {self.startup_log} and {self.log_dir}")
            time.sleep(interval)
