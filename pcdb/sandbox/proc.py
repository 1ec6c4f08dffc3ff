"""Running PostgreSQL's programs: as the ``postgres`` user when we are root, always with a bound."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pcdb.errors import SandboxError

SERVER_USER = "postgres"


@dataclass(frozen=True)
class OsUser:
    """The OS account the servers run as."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    @property
    def popen(self) -> dict:
        """What subprocess needs to run a program as this user: nothing when it is us."""
        return {} if self.is_self else {"user": self.uid, "group": self.gid, "extra_groups": []}


@cache
def server_user() -> OsUser:
    """Return ``postgres`` when running as root (initdb refuses root), else ourselves."""
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise SandboxError("running as root, but there is no 'postgres' OS user to run the "
                               "servers; install Debian's postgresql package (./dev setup)") from None
    else:
        entry = pwd.getpwuid(os.geteuid())
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def invoking_user() -> str:
    """The OS user pcdb itself runs as."""
    return pwd.getpwuid(os.geteuid()).pw_name


def bindir_of_major(major: str) -> Path | None:
    """Server binaries of ``major`` on this machine, or None: $PCDB_PG_BINDIR when it is that
    major, Debian's, then pcdb's installed build of it (``builds``)."""
    from pcdb.sandbox import builds

    override = os.environ.get("PCDB_PG_BINDIR")
    if override and (Path(override) / "postgres").exists() and \
            binaries_version(Path(override)).split(".")[0] == str(major):
        return Path(override)
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if (debian / "initdb").exists():
        return debian
    return builds.bindir(str(major))


def find_bindir(configured: str | None = None, major: str | None = None) -> Path:
    """Locate the PostgreSQL server binaries (initdb, pg_ctl, ...).

    Order: ``configured`` (the folder a sandbox was made with), those of ``major`` (the spec's
    version, ``bindir_of_major``), $PCDB_PG_BINDIR, ``pg_config --bindir``, the newest
    /usr/lib/postgresql/*/bin. What was found may be another major than the spec's:
    ``binaries_version`` says which, and the sandbox says so.
    """
    of_major = bindir_of_major(major) if major else None
    candidates = [configured, str(of_major) if of_major else None, os.environ.get("PCDB_PG_BINDIR")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False)
        candidates.append(result.stdout.strip())
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                   if p.parent.name.isdigit() else 0)
    candidates += [str(p) for p in reversed(found)]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise SandboxError("no PostgreSQL server binaries (initdb) found; run ./dev setup, which installs "
                       "Debian's postgresql packages, or set PCDB_PG_BINDIR")


def client_bindir() -> Path:
    """The machine's own PostgreSQL programs (the newest Debian major, or $PCDB_PG_BINDIR): the
    client programs a build of an older major is given (``builds``)."""
    found = find_bindir(None)
    if (found.parent / "PROVENANCE.json").exists():
        raise SandboxError(f"$PCDB_PG_BINDIR names a pcdb build ({found}), not the machine's own PostgreSQL")
    return found


@cache
def binaries_version(bindir: Path) -> str:
    """The PostgreSQL version of the server binaries in ``bindir`` ("15.14"), from `postgres --version`
    ("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)")."""
    result = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30,
                            check=False)
    words = result.stdout.split("(PostgreSQL)", 1)[-1].split()
    if result.returncode != 0 or not words:
        raise SandboxError(f"{bindir / 'postgres'} --version failed: {(result.stderr or result.stdout).strip()}")
    return words[0]


def run(cmd: list[str], *, timeout: float, what: str, env: dict[str, str] | None = None,
        check: bool = True, log: Path | None = None, stdin: str | None = None,
        output: Path | None = None, cwd: Path | str = "/",
        done_when: Callable[[], bool] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as the server user with a deadline; failures become SandboxError.

    Args:
        what: the action and node, for the message ("start node1").
        log: a log file (the server's) to name in the message when it fails.
        output: a file the command's own output is appended to, and named when it fails: the
            file that holds the error (pg_rewind writes nowhere else).
        cwd: where it runs (pg_upgrade writes its scripts there): a folder the server user owns.
        done_when: a sign, looked at every 5 ms, that what the command waits for has happened
            (`pg_ctl -w` looks every 100 ms): true, this returns at once (exit 0, no output) and
            the command ends by itself in the background. A command that ends first is judged
            by its exit as usual.
    """
    user = server_user()
    kwargs = user.popen
    # HOME of the server user: libpq looks for client certificates under ~/.postgresql.
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", "HOME": user.home, **(env or {})}
    full_env.pop("PGPASSWORD", None)
    try:
        if done_when is not None and stdin is None and output is None:
            result = _run_until(cmd, timeout, done_when, env=full_env, cwd=cwd, **kwargs)
            if result is None:
                return subprocess.CompletedProcess(cmd, 0, "", "")
        else:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                                    cwd=cwd, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                                    check=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{what}: no answer within {timeout:.0f}s"
                           + (f"; see {output or log}" if output or log else "")) from None
    if output is not None:
        with open(output, "a", encoding="utf-8") as kept:
            kept.write(f"--- {' '.join(cmd)} (exit {result.returncode})\n{result.stdout}{result.stderr}")
    if check and (result.returncode != 0 or (stdin is not None and "ERROR:" in result.stderr + result.stdout)):
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise SandboxError(f"{what} failed: {' / '.join(detail) or 'exit ' + str(result.returncode)}"
                           + (f"; see {output or log}" if output or log else ""))
    return result


def _run_until(cmd: list[str], timeout: float, done_when: Callable[[], bool],
               **popen) -> subprocess.CompletedProcess[str] | None:
    """``cmd``'s result, or None as soon as ``done_when()`` is true while it still runs. A thread
    reads its output and reaps it whenever it ends."""
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, **popen)
    said: list[tuple[str, str]] = []
    reader = threading.Thread(target=lambda: said.append(child.communicate()), daemon=True,
                              name=f"reap {Path(cmd[0]).name}")
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive():
        if done_when():
            return None
        if time.monotonic() >= deadline:
            child.kill()
            reader.join()
            raise subprocess.TimeoutExpired(cmd, timeout)
        reader.join(0.005)
    stdout, stderr = said[0]
    return subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)


def chown_tree(path: Path) -> None:
    """Give ``path`` (and everything under it) to the server user."""
    user = server_user()
    if user.is_self:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.uid, user.gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.uid, user.gid)


def write_file(path: Path, text: str, mode: int = 0o600, server_owned: bool = True) -> None:
    """Write ``text`` to ``path`` atomically with ``mode``, owned by the server user if asked."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    if server_owned and not server_user().is_self:
        os.chown(tmp, server_user().uid, server_user().gid)
    os.replace(tmp, path)
