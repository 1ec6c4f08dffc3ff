"""Whether a node's server runs is read from its postmaster.pid, as `pg_ctl status` reads it,
without a process per question. (The sandbox's tests start and kill real servers; these are
the file's own cases, which a real server rarely shows.)"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pcdb.errors import SandboxError
from pcdb.process import alive
from pcdb.sandbox import proc
from pcdb.sandbox.node import Node


def node_with(pid_line: str | None) -> Node:
    home = Path(tempfile.mkdtemp(prefix="pcdb-node-"))
    atexit.register(shutil.rmtree, home, True)
    (home / "data").mkdir()
    (home / "data" / "PG_VERSION").write_text("15\n")
    if pid_line is not None:
        (home / "data" / "postmaster.pid").write_text(f"{pid_line}\n{home / 'data'}\n1700000000\n5432\n")
    return Node("node1", home, 5432, Path("/nonexistent"))


def test_a_live_postmaster_pid_is_running_and_a_dead_or_unreadable_one_is_not():
    server = subprocess.Popen(["sleep", "60"])
    try:
        assert node_with(str(server.pid)).is_running()
        assert node_with(str(-server.pid)).is_running()            # a single-user server: pid negated
    finally:
        server.kill()
        server.wait()
    assert not node_with(str(server.pid)).is_running()             # stopped: its pid file left behind
    assert not node_with(None).is_running()                        # cleanly stopped: no pid file
    assert not node_with("").is_running()                          # being written
    assert not node_with("0").is_running()
    home = node_with("1").home
    (home / "data" / "PG_VERSION").unlink()
    assert not Node("node1", home, 5432, Path("/nonexistent")).is_running()   # not a cluster at all


# A postmaster as PostgreSQL's exit path leaves it: postmaster.pid removed in the exit callbacks,
# the process still there for a moment (here 0.3 s, so the window cannot be missed). A fast stop
# is SIGINT, an immediate one SIGQUIT. In Python, not sh: a shell cannot trap a signal that was
# ignored when it started, and whatever a script starts in the background (`./dev test &`)
# starts with SIGINT and SIGQUIT ignored. A real postmaster sets its own handlers, as this one
# does. Debian's python3: the server user may run it (not so a virtualenv under /root).
LINGERING_POSTMASTER = r"""
import os, signal, sys, time
pid_file = sys.argv[1]
def leave(*_):
    os.unlink(pid_file)
    time.sleep(0.3)
    os._exit(0)
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
    signal.signal(sig, leave)
with open(pid_file + ".new", "w") as f:
    f.write(f"{os.getpid()}\n{os.path.dirname(pid_file)}\n1700000000\n5432\n")
os.rename(pid_file + ".new", pid_file)
while True:
    signal.pause()
"""


def test_a_stop_returns_once_the_postmaster_has_exited_not_when_its_pid_file_is_gone():
    """`pg_ctl stop -w` counts a server stopped as soon as postmaster.pid is gone; a start right
    then could meet the old postmaster's memory (a 5 ms wait on that sign saw it alive after
    `sandbox down`). Real pg_ctl, a postmaster that removes its file 0.3 s before it exits."""
    node = node_with(None)
    node = Node(node.name, node.home, node.port, proc.find_bindir())
    proc.chown_tree(node.home)
    postmaster = subprocess.Popen(["/usr/bin/python3", "-c", LINGERING_POSTMASTER, str(node.data / "postmaster.pid")],
                                  **proc.server_user().popen)
    try:
        node.wait(node.is_running, "the stand-in postmaster's start", 10)
        node.stop("fast", timeout=10)
        assert not alive(postmaster.pid)
        assert not node.is_running()
    finally:
        postmaster.kill()
        postmaster.wait()


def test_a_run_that_is_done_by_its_sign_returns_before_its_command_ends_and_a_failure_or_hang_still_counts():
    """proc.run's done_when (a start's "the postmaster says it is up"): true while the command
    runs, run returns at once and the command ends by itself; a command that fails first, or
    never ends, is judged as without it."""
    home = node_with(None).home                                     # the server user's to write
    proc.chown_tree(home)
    ended = home / "ended"
    result = proc.run(["/bin/sh", "-c", f"sleep 2; touch {ended}"], timeout=30, what="a slow command",
                      done_when=lambda: True)
    assert result.returncode == 0 and not ended.exists()           # returned; the command still runs
    with pytest.raises(SandboxError, match="a failing command failed: it said no"):
        proc.run(["/bin/sh", "-c", "echo 'it said no' >&2; exit 3"], timeout=30, what="a failing command",
                 done_when=lambda: False)
    with pytest.raises(SandboxError, match="a hanging command: no answer within"):
        proc.run(["sleep", "30"], timeout=0.3, what="a hanging command", done_when=lambda: False)
