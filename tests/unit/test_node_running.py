"""Whether a node's server runs is read from its postmaster.pid, as `pg_ctl status` reads it,
without a process per question. (The sandbox's tests start and kill real servers; these are
the file's own cases, which a real server rarely shows.)"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

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
