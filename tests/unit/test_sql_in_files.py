"""SQL lives in pcdb/sql/ as named blocks (STYLE rule 2): no query is written in Python. What may
stay inline: session commands (SET, RESET, SHOW, CHECKPOINT), a call of one function, and
one-statement DDL builders whose every object is a psycopg.sql placeholder ({}). The orchestrator's
own SQLite stores (``db.execute``) are not PostgreSQL and are not counted."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pcdb.sql import SQL_DIR, queries

ROOT = Path(__file__).resolve().parents[2]
SQLISH = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|REVOKE|WITH|REASSIGN|VACUUM|ANALYZE|"
                    r"REINDEX|COPY|TRUNCATE|COMMENT|LOCK)\b", re.I)
TRIVIAL = re.compile(r"^\s*(SELECT (pg_catalog\.)?\w+\([^()]*\)(::\w+)?|SELECT current_user)\s*$", re.I)
BUILDER = re.compile(r"^\s*(CREATE|ALTER|DROP|GRANT|REVOKE|REASSIGN|REINDEX|ANALYZE)\b[^;]*\{\}", re.I)


def inline_queries(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("execute", "executemany", "SQL"):
            continue
        receiver = func.value if isinstance(func, ast.Attribute) else None
        if isinstance(receiver, ast.Attribute) and receiver.attr == "db" or isinstance(receiver, ast.Name) and \
                receiver.id == "db":
            continue                                   # the orchestrator's SQLite stores
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            text = arg.value
        elif isinstance(arg, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in arg.values)
        elif isinstance(arg, ast.BinOp) and isinstance(arg.left, ast.Constant) and isinstance(arg.left.value, str):
            text = arg.left.value
        else:
            continue
        if SQLISH.match(text) and not TRIVIAL.match(text) and not BUILDER.match(text):
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            found.append(f"{shown}:{node.lineno}: {text[:80]!r}")
    return found


def test_no_query_is_written_in_python():
    files = [p for d in ("pcdb", "flows", "tasks") for p in (ROOT / d).rglob("*.py") if "sql" not in p.parts]
    found = [f for p in files for f in inline_queries(p)]
    assert found == [], "move these into pcdb/sql/ as named blocks:\n" + "\n".join(found)


def test_the_guard_sees_a_query_written_in_python(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('def f(conn):\n    conn.execute("SELECT relname FROM pg_catalog.pg_class")\n'
                       '    conn.execute("SET lock_timeout = \'2s\'")\n')
    assert inline_queries(planted) == ["planted.py:2: 'SELECT relname FROM pg_catalog.pg_class'"]


def test_every_named_block_has_a_description_and_a_body():
    for path in SQL_DIR.glob("*.sql"):
        text = path.read_text()
        for name in re.findall(r"^-- name: (\w+)$", text, re.M):
            after = text.split(f"-- name: {name}\n", 1)[1]
            assert re.match(r"-- \S", after) and not after.startswith("-- None"), f"{path.name}: {name} has no description"
            assert queries(path.name)[name].strip(), f"{path.name}: {name} is empty"
