"""No test depends on the date or the time of day: the runbooks and the tests read the present
moment from pcdb.clock, which a test fixes (``with clock.fixed(at)``), never from the wall clock
directly. This test reads the code to hold that line."""

from __future__ import annotations

import ast
from datetime import datetime, timezone
from pathlib import Path

from pcdb import clock

ROOT = Path(__file__).resolve().parents[2]
WALL = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"), ("time", "time"),
        ("time", "localtime"), ("time", "gmtime")}
# benchmarks/ measure real time on purpose; pcdb/clock.py is the one place that reads it.
ALLOWED = {ROOT / "pcdb" / "clock.py"}


def wall_clock_reads(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and (node.func.value.id, node.func.attr) in WALL:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {node.func.value.id}.{node.func.attr}()")
        if isinstance(node, ast.ImportFrom) and node.module == "time" and \
                any(("time", alias.name) in WALL for alias in node.names):
            found.append(f"{path.relative_to(root)}:{node.lineno}: from time import a wall-clock reader")
    return found


def test_nothing_but_pcdb_clock_reads_the_wall_clock():
    files = [p for folder in ("pcdb", "flows", "tasks", "tests") for p in (ROOT / folder).rglob("*.py")
             if p not in ALLOWED and "data" not in p.relative_to(ROOT).parts]
    found = [hit for path in files for hit in wall_clock_reads(path)]
    assert found == [], "read the time through pcdb.clock.now() (a test fixes it with clock.fixed):\n" + "\n".join(found)


def test_the_checker_finds_a_planted_wall_clock_read(tmp_path):
    planted = tmp_path / "probe.py"
    planted.write_text("import time\nfrom datetime import date, datetime\n\n"
                       "STAMP = (datetime.now(), date.today(), time.time())\n")
    assert wall_clock_reads(planted, tmp_path) == [f"probe.py:4: {call}()"
                                                   for call in ("datetime.now", "date.today", "time.time")]


def test_a_fixed_clock_is_what_now_answers_and_the_one_outside_comes_back_after():
    outer, inner = (datetime(2026, 11, 12, 0, 0, tzinfo=timezone.utc), datetime(2026, 12, 2, 5, 36, tzinfo=timezone.utc))
    with clock.fixed(outer):
        with clock.fixed(inner):
            assert clock.now() == inner
        assert clock.now() == outer
