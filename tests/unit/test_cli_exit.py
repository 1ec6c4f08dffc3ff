"""The CLI ends without Python's teardown of its modules (cli/main.py, ``leave``), and nothing a
normal exit does that anyone sees is lost: the status, a message given to sys.exit, what was
printed but not yet flushed into a pipe, the atexit functions, a non-daemon thread's work."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import atexit, sys, threading, time
from cli.main import leave
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
def work():        # writes only once the exit has begun (the main thread is marked stopped then)
    deadline = time.monotonic() + 30
    while threading.main_thread().is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    sys.stdout.write(" and the thread's line")
threading.Thread(target=work).start()       # not a daemon: the exit waits for it
sys.stdout.write("printed, not flushed")    # a pipe: block-buffered
leave({code})
"""


@pytest.mark.parametrize(("code", "status", "said"), [("None", 0, ""), ("3", 3, ""), ("'no such run'", 1, "no such run")])
def test_the_status_the_output_the_atexit_functions_and_the_threads_survive_the_fast_exit(code, status, said):
    ran = subprocess.run([sys.executable, "-c", PROGRAM.format(code=code)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert ran.returncode == status, ran.stderr
    assert ran.stdout == "printed, not flushed and the thread's line"
    assert ran.stderr.splitlines() == ([said] if said else []) + ["atexit ran"]
