"""A new Prefect database starts as a copy of a migrated, empty one (pcdb.prefectdb): private, with
Prefect's schema, without a key, and never over a database that exists."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import sqlite3
import stat
import tempfile
from pathlib import Path

import pytest

from pcdb.prefectdb import seed_database, template_database

pytestmark = pytest.mark.prefect      # Prefect's own migrations, in a child process, the first time


def test_a_new_database_is_a_private_migrated_copy_and_an_existing_one_is_never_replaced():
    template = template_database()
    assert stat.S_IMODE(template.stat().st_mode) == 0o600 and stat.S_IMODE(template.parent.stat().st_mode) == 0o700
    path = Path(tempfile.mkdtemp(prefix="pcdb-seed-")) / "home" / "prefect.db"
    atexit.register(shutil.rmtree, path.parent.parent, True)
    assert seed_database(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"flow_run", "deployment", "work_pool", "automation", "block_document"} <= tables
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM configuration").fetchone() == (0,)    # no key, no setting
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)
        db.execute("INSERT INTO configuration (id, key, value) VALUES ('x', 'history', '{}')")
    assert not seed_database(path)                                   # a database is there: left alone
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT key FROM configuration").fetchall() == [("history",)]
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".seed")]   # no copy left beside it
