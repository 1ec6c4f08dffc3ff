"""What every part of the sandbox shares: the node names, the lock that lets one process change
a sandbox at a time, and small helpers."""

from __future__ import annotations

import fcntl
import functools
import os
import socket
import time
from pathlib import Path

from pcdb import clock
from pcdb.errors import SandboxError

HA_NODES = ("node1", "node2")
REPLICA = "replica"
REPLICATION_USER = "replicator"


def default_root(env_name: str) -> Path:
    """Where an environment's sandbox lives unless $PCDB_SANDBOX_ROOT or the spec says otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/pcdb") / env_name
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "pcdb" / env_name


def _free_port(taken: set[int]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port
    raise SandboxError("could not find a free TCP port on 127.0.0.1")


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _now() -> str:
    return clock.now().isoformat(timespec="milliseconds")


def exclusive(method=None, *, creates_root: bool = True):
    """One process changes a sandbox at a time: an exclusive lock on ``<root>/state.lock`` for the
    whole operation (re-entrant within the Sandbox object). A second process waits up to
    ``lock_timeout`` seconds, then fails naming the holder, before it changed anything.
    With ``creates_root=False`` (down, destroy) a sandbox that does not exist is left uncreated."""
    if method is None:
        return functools.partial(exclusive, creates_root=creates_root)

    @functools.wraps(method)
    def locked(self, *args, **kwargs):   # self: a Sandbox
        if self._lock_depth or (not creates_root and not self.root.exists()):
            self._lock_depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth -= 1
        if not self.root.exists():
            self._root_was_new = True  # pcdb made this folder: its mode is pcdb's to set
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "state.lock", os.O_RDWR | os.O_CREAT, 0o600)   # only pcdb's own processes take it
        try:
            os.fchmod(fd, 0o600)          # one an earlier pcdb left 0644
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                        raise SandboxError(f"another pcdb process is changing the sandbox at {self.root} "
                                           f"({holder}); {method.__name__} waited {self.lock_timeout:.0f}s. "
                                           "Wait for it to finish, or stop that process") from None
                    time.sleep(0.1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, {method.__name__} since {_now()}\n".encode(), 0)
            self._lock_depth = 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return locked


def lock_holder(root: Path) -> str | None:
    """Who holds the sandbox's lock now (a pcdb process changing it), or None when it is free."""
    path = root / "state.lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
