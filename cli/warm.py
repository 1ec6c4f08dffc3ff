"""The ``pcdb`` command's warm start: a process that has already imported the commands, the
flows and Prefect, and forks a copy of itself for each command a person runs.

Importing Prefect, pydantic's models and the flows takes 1.2 to 1.6 s of every command on a
2-core machine, more than a no-change install's work (docs/benchmarks.md, P2). ``pcdb server up``
starts this process (``python -m cli.warm serve``); ``pcdb server down`` stops it. The ``pcdb``
command, this module's :func:`main`, imports almost nothing: it hands the warm process its
arguments, environment, working directory, umask and its own standard input, output and error
(the descriptors themselves), and waits for the command's exit status. The copy that runs the
command is a new process: it starts from the warm process as it was after its imports, never
from an earlier command, and exits when the command ends.

What makes it the same command as a cold one:
- only the same user: the socket is in a folder only its owner can enter (0700), the warm
  process answers only a peer of its own uid (SO_PEERCRED), and the command checks the same of
  the warm process before it sends anything;
- only the same code: both sides fingerprint every file of the four packages and the
  interpreter; a warm process whose code changed since it started says "stale", exits, and the
  command runs cold;
- the command's own environment replaces the warm process's, Prefect's settings and logging are
  built again from it, the consoles look at the new terminal;
- Ctrl-C and the other stop signals are passed on to the command's process; if the ``pcdb``
  process itself is killed, the command's process is killed too, as it would die with it;
- only commands that never prompt for anything (:data:`WARM_COMMANDS`): a forked process has no
  controlling terminal, so a passphrase prompt (``ssh-keygen``'s, for a signed decision) could
  not be answered. Every other command, ``--help``, and ``PCDB_WARM=0`` run cold, as before.

When no warm process answers, the command runs cold: nothing else changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("cli", "flows", "tasks", "pcdb")

# The commands a warm process runs, with the subcommands it runs of each (None: the command
# itself, with options only; "*": any). None of them prompts for anything.
WARM_COMMANDS: dict[str, set[str | None]] = {
    **{name: {"*"} for name in ("install", "plan", "preflight", "verify-backups", "checklist", "capacity",
                                "sla", "cost")},
    "health": {None}, "history": {None, "verify"}, "incident": {"status"}}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
MAX_SOCKET_PATH = 107                # sun_path, less its closing NUL
_CRED = struct.Struct("3i")          # struct ucred: pid, uid, gid
_LENGTH = struct.Struct("!I")


def main() -> None:
    """The console script: the command in a fork of the warm process when one answers, else cold."""
    status = run_warm(sys.argv[1:])
    if status is None:
        from cli.main import main as cold

        cold()
        return
    if status < 0:                    # the command's process was killed by a signal: so is this one
        sys.stdout.flush()
        if -status not in (signal.SIGKILL, signal.SIGSTOP):    # those two have no handler to reset
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status if status >= 0 else 128 - status)


def warm_command(argv: list[str]) -> bool:
    """Whether these arguments name a command a warm process runs (``--help`` never does)."""
    if not argv or "--help" in argv or argv[0] not in WARM_COMMANDS:
        return False
    allowed = WARM_COMMANDS[argv[0]]
    second = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
    return "*" in allowed or second in allowed


def folder() -> str:
    """Where the warm process's socket and log live: the user's own cache folder."""
    return os.path.join(os.path.expanduser("~"), ".cache", "pcdb", "warm")


def socket_path() -> str:
    """One warm process per user and per installed copy of pcdb."""
    return os.path.join(folder(), hashlib.sha256(ROOT.encode()).hexdigest()[:16] + ".sock")


def code_fingerprint() -> str:
    """Every file of pcdb's packages (name, size, modification time) and the interpreter: what a
    command would import."""
    digest = hashlib.sha256(f"{sys.prefix}\0{sys.version}\0".encode())
    for package in PACKAGES:
        for top, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                path = os.path.join(top, name)
                st = os.stat(path)
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for entry in sys.path:             # an installed or removed package changes its folder's time
        if entry.endswith("site-packages") and os.path.isdir(entry):
            digest.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _private(path: str) -> bool:
    """A folder of this user's that nobody else may enter or write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def _peer(sock: socket.socket) -> tuple[int, int, int]:
    """The other end's pid, uid and gid, as the kernel says."""
    return _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))


def _peer_uid(sock: socket.socket) -> int:
    return _peer(sock)[1]


def _connect(timeout: float = 2.0) -> socket.socket | None:
    path = socket_path()
    if not _private(os.path.dirname(path)):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        if _peer_uid(sock) != os.getuid():
            raise OSError("the warm process is another user's")
    except OSError:
        sock.close()
        return None
    return sock


def _send(sock: socket.socket, request: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(sock, [_LENGTH.pack(len(body))], fds or [])
    sock.sendall(body)


def run_warm(argv: list[str]) -> int | None:
    """The command's exit status (minus the signal's number when a signal ended it), or None when
    it was not run here (not a warm command, no warm process, another code): then it runs cold."""
    if os.environ.get("PCDB_WARM") == "0" or not warm_command(argv):
        return None
    sock = _connect()
    if sock is None:
        return None
    umask = os.umask(0o077)
    os.umask(umask)
    # A signal this process ignores (SIGINT and SIGQUIT, started in a script's background) the
    # command ignores too, as a cold command inherits it; the others are passed on.
    ignored = [int(sig) for sig in STOP_SIGNALS if signal.getsignal(sig) == signal.SIG_IGN]
    try:
        _send(sock, {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "umask": umask,
                     "ignored": ignored, "code": code_fingerprint()}, [0, 1, 2])
        sock.settimeout(None)
        answers = sock.makefile("rb")
        first = answers.readline().split()
    except OSError:
        sock.close()
        return None
    if first[:1] != [b"started"] or len(first) != 2 or not first[1].isdigit():   # "stale": the command runs cold
        sock.close()
        return None
    pid = int(first[1])
    for sig in STOP_SIGNALS:
        if int(sig) not in ignored:
            signal.signal(sig, lambda number, _frame: os.kill(pid, number))
    _suspend_together(pid)
    last = answers.readline().split()
    if last[:1] == [b"exit"]:
        return int(last[1])
    if last[:1] == [b"signal"]:
        return -int(last[1])
    print("pcdb: the warm process ended without the command's exit status", file=sys.stderr)
    return 1


def _suspend_together(pid: int) -> None:
    """Ctrl-Z (SIGTSTP) stops the command's process with this one, and `fg` (SIGCONT) resumes both,
    as a cold command is stopped and resumed. Where the kernel discards a SIGTSTP (a process group
    with no parent in the session to resume it, "orphaned"), this process is not stopped, and nor
    is the command: it is resumed at once."""
    if signal.getsignal(signal.SIGTSTP) == signal.SIG_IGN:
        return

    def stop(_number, _frame):
        os.kill(pid, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)          # stopped here until SIGCONT, unless discarded
        os.kill(pid, signal.SIGCONT)                  # resumed, or never stopped: the command goes on too
        signal.signal(signal.SIGTSTP, stop)

    signal.signal(signal.SIGTSTP, stop)


def ready(timeout: float = 2.0) -> str | None:
    """The fingerprint of the code a warm process of this copy runs, when one answers."""
    sock = _connect(timeout)
    if sock is None:
        return None
    try:
        _send(sock, {"ping": True})
        answer = sock.makefile("rb").readline().split()
    except OSError:
        return None
    finally:
        sock.close()
    return answer[1].decode() if answer[:1] == [b"ready"] and len(answer) > 1 else None


def answers(within: float) -> bool:
    """Whether this copy's warm process answers with today's code within ``within`` seconds (a
    look every 50 ms, while it runs): `server up` returns once it does, so that the next command
    is already forked from it."""
    import time

    code, deadline = code_fingerprint(), time.monotonic() + within
    while ready(timeout=1.0) != code:
        if time.monotonic() >= deadline or running_pid() is None:
            return False
        time.sleep(0.05)
    return True


def _pid_file() -> str:
    return socket_path().removesuffix(".sock") + ".pid"


def log_file() -> str:
    return socket_path().removesuffix(".sock") + ".log"


# What the warm process keeps of the environment it is started in: each command brings its own.
_KEPT = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "PREFECT_HOME", "PREFECT_LOGGING_LEVEL",
         "PCDB_WARM_LOOK_EVERY")


def start() -> tuple[str, str]:
    """This copy's warm process, started unless one running today's code answers already:
    ("unchanged" | "started", what to say). Its start-up is not waited for here (see
    :func:`answers`): until it answers, commands run cold."""
    import subprocess
    from pathlib import Path

    from pcdb.private import private_dir, write_private
    from pcdb.process import started_at

    pid = running_pid()
    if ready() == code_fingerprint():
        return "unchanged", f"pid {pid}" if pid else "running"
    stop()
    if len(os.fsencode(socket_path())) > MAX_SOCKET_PATH:
        return "unchanged", (f"not started: its socket {socket_path()} would be longer than a unix socket's "
                             f"{MAX_SOCKET_PATH} bytes (HOME is that deep); commands start cold")
    try:
        private_dir(Path(folder()))         # 0700, made so if it was looser
    except PermissionError:                 # another user's: refused below
        pass
    if not _private(folder()):
        return "unchanged", (f"not started: {folder()} must be this user's and closed to others "
                             f"(chmod 700 {folder()}); commands start cold")
    env = {k: v for k, v in os.environ.items() if k in _KEPT or k.startswith("LC_")}
    with open(write_private(Path(log_file()), ""), "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "cli.warm", "serve"], env=env, cwd=ROOT,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    write_private(Path(_pid_file()), f"{child.pid} {started_at(child.pid)}\n")
    return "started", f"pid {child.pid}, log {log_file()}"


def running_pid() -> int | None:
    """The warm process's pid, while the process the pid file names (pid and start time, so
    never a reused pid) runs."""
    from pcdb.process import started_at

    try:
        with open(_pid_file()) as f:
            pid, started = f.read().split()
    except (OSError, ValueError):
        return None
    return int(pid) if started_at(int(pid)) == started else None


def stop(timeout: float = 10.0) -> int | None:
    """Stop this copy's warm process (commands it started go on to their end); its pid, if one ran."""
    import select

    pid = running_pid()
    if pid is not None:
        try:
            ended = os.pidfd_open(pid)
        except ProcessLookupError:
            ended = None
        if ended is not None:
            os.kill(pid, signal.SIGTERM)
            if not select.select([ended], [], [], timeout)[0]:   # readable once it has exited
                os.kill(pid, signal.SIGKILL)                    # only it: its commands run on
                select.select([ended], [], [], 5)
            os.close(ended)
    try:
        os.unlink(_pid_file())
    except FileNotFoundError:
        pass
    return pid


# --- the warm process ----------------------------------------------------------------------------

def serve() -> None:
    """Import what the commands need, then fork a process per command, until told to stop or
    until a command comes from other code (the files changed since)."""
    look_every = _look_every()
    code = code_fingerprint()
    _import_everything()
    import threading

    if threading.active_count() != 1:    # a fork keeps only the forking thread: refuse rather than risk it
        raise SystemExit(f"pcdb warm: {threading.active_count()} threads after the imports; not serving")
    path = socket_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if not _private(os.path.dirname(path)):
        raise SystemExit(f"pcdb warm: {os.path.dirname(path)} must be this user's and 0700")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    os.chmod(staging, 0o600)
    listener.listen(64)
    os.replace(staging, path)          # a running one is replaced; it stops at its next command
    mine = os.stat(path).st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)     # each command's watcher is reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"pcdb warm: pid {os.getpid()} serving {path} (code {code})", flush=True)
    listener.settimeout(look_every)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if _socket_inode(path) != mine:     # its folder removed, or another one took its place
                    print("pcdb warm: its socket is gone: stopping", flush=True)
                    return
                continue
            conn.settimeout(None)
            with conn:
                if not _serve_one(conn, listener, code):
                    return
    finally:
        if _socket_inode(path) == mine:
            os.unlink(path)


def _look_every() -> float:
    """How often an idle warm process checks that its socket is still its own: 30 s, or
    $PCDB_WARM_LOOK_EVERY seconds (read by the warm process only: a bad value never stops a command)."""
    given = os.environ.get("PCDB_WARM_LOOK_EVERY") or "30"
    try:
        seconds = float(given)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise SystemExit(f"pcdb warm: PCDB_WARM_LOOK_EVERY={given!r} is not a number of seconds between 0 and 3600")
    return seconds


def _socket_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _import_everything() -> None:
    import importlib

    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pcdb")   # as cli.main sets it
    importlib.import_module("cli.main")
    from pcdb.runbooks import RUNBOOKS

    for module in sorted({r.flow.split(":")[0] for r in RUNBOOKS}):
        importlib.import_module(module)
    for module in ("prefect.flow_engine", "prefect.task_engine", "prefect.client.orchestration",
                   "prefect.logging.configuration"):
        importlib.import_module(module)


def _serve_one(conn: socket.socket, listener: socket.socket, code: str) -> bool:
    """Answer one connection; False when this warm process should stop (its code is stale)."""
    if _peer_uid(conn) != os.getuid():
        print("pcdb warm: refused a connection from another user", flush=True)
        return True
    conn.settimeout(5)
    fds: list[int] = []
    try:
        head, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 3)
        if len(head) != _LENGTH.size:
            raise OSError("short header")
        (length,) = _LENGTH.unpack(head)
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise OSError("short request")
            body += chunk
        request = json.loads(body)
        if not isinstance(request, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        print(f"pcdb warm: a bad request ({exc})", flush=True)
        for fd in fds:
            os.close(fd)
        return True
    try:
        if request.get("ping"):
            conn.sendall(f"ready {code}\n".encode())
            return True
        if request.get("code") != code or len(fds) != 3:
            conn.sendall(b"stale\n")
            print("pcdb warm: the code changed since this process started: stopping", flush=True)
            return False
        if not isinstance(request.get("argv"), list) or not warm_command(request["argv"]):
            conn.sendall(b"cold\n")              # a command that may prompt runs where it has a terminal
            return True
        if os.fork() == 0:
            try:
                listener.close()
                _watch(conn, request, fds)
            finally:
                os._exit(70)
        return True
    finally:
        for fd in fds:
            os.close(fd)


def _watch(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Between the warm process and the command: start the command's process, tell the ``pcdb``
    process its pid and then its exit status; kill it if the ``pcdb`` process goes away."""
    import select

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    child = os.fork()
    if child == 0:
        try:
            _become(conn, request, fds)
        finally:
            os._exit(70)
    conn.settimeout(None)
    conn.sendall(f"started {child}\n".encode())
    print(f"pcdb warm: pid {child} runs `{request['argv'][0]}` for pid {_peer(conn)[0]}", flush=True)
    ended = os.pidfd_open(child)
    poller = select.poll()
    poller.register(ended, select.POLLIN)
    poller.register(conn, select.POLLIN)
    while True:
        happened = {fd for fd, _ in poller.poll()}
        if ended in happened:
            break
        if conn.fileno() in happened and not conn.recv(1):    # the pcdb process is gone: so is its command
            os.kill(child, signal.SIGKILL)
            poller.unregister(conn)
    _, status = os.waitpid(child, 0)
    said = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    try:
        conn.sendall(f"{said}\n".encode())
    except OSError:
        pass
    os._exit(0)


FORKED = False     # True in a command's process forked from the warm process


def _become(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """The command's process: the ``pcdb`` process's streams, folder, umask and environment, then
    the command as the cold entry point runs it."""
    global FORKED
    FORKED = True
    conn.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for sig in STOP_SIGNALS:           # as a cold command starts: Python's own, or what was ignored
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, signal.SIG_IGN if int(sig) in request.get("ignored", []) else default)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))   # as Python opens it: line by line on a terminal
    sys.argv = ["pcdb", *request["argv"]]
    try:
        from cli.common import err, out

        out.__init__()                 # colour, width and terminal of this command's streams
        err.__init__(stderr=True)
        from cli.main import main

        main()
    except BaseException:              # noqa: BLE001 - told on the command's stderr, never back in the loop
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def settings_from_this_environment() -> None:
    """In a command's process: Prefect read its settings, and configured logging from them, in
    the warm process's environment when it was imported. A command names its server in the
    environment first (cli/common.py, ``use_orchestrator``), then this reads the settings again
    from the command's environment, as a cold command's import of Prefect would (0.09 s), and
    configures logging again if what it says of logging differs."""
    if not FORKED:
        return
    import logging

    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging
    from prefect.settings import get_current_settings

    before = get_current_settings().logging
    refresh_global_settings_context()
    if get_current_settings().logging != before:
        extra = before.extra_loggers or []
        for name in extra.split(",") if isinstance(extra, str) else extra:    # given again by setup_logging
            logging.getLogger(name.strip()).handlers.clear()
        setup_logging(incremental=False)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        # Served from the module the commands import, not from this __main__ copy of it: the
        # commands read cli.warm.FORKED, which _become must set there. (Set here, on __main__,
        # a forked command's Prefect settings were never read again from its environment.)
        from cli import warm

        warm.serve()
    else:
        raise SystemExit("usage: python -m cli.warm serve")
