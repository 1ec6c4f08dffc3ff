"""Named SQL blocks loaded from the files in sql/ (``-- name: x`` then a one-line description).

Identifiers never go into these strings: callers use psycopg.sql.Identifier for them.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from pathlib import Path

SQL_DIR = Path(str(files(__name__)))   # the .sql files are package data beside this loader
_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries(filename: str) -> dict[str, str]:
    """Return the named blocks of ``sql/<filename>``."""
    text = (SQL_DIR / filename).read_text()
    parts = _BLOCK.split(text)
    blocks = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        lines = [ln for ln in body.strip().splitlines() if not ln.startswith("-- ")]
        blocks[name] = "\n".join(lines).strip().rstrip(";")
    return blocks


def query(filename: str, name: str) -> str:
    """Return one named block; KeyError names the file when it is absent."""
    try:
        return queries(filename)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/{filename}") from None
