"""A new Prefect SQLite database starts from a migrated, empty copy instead of an empty file.

A Prefect server on a new SQLite database first runs every migration of Prefect's schema: on this
machine's 2 cores that is about 12 CPU-seconds of a fresh server's 20 (docs/benchmarks.md), paid
again by every new orchestrator home, every command's temporary server on a new PREFECT_HOME, and
every test session. pcdb migrates one database once per Prefect version (the template, in the
user's cache) and copies it where a new database is about to be made. The server still checks
its migrations on start, so a template of the same version is only a head start.

The template holds Prefect's schema and nothing else: no run, no block, and never an encryption
key (pcdb gives its server the key by environment; a key stored in a copied database would be
shared by every server made from it). Plain Python: Prefect runs in a child process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from pcdb.private import FILE, private_dir

_MIGRATE = ("import asyncio\nfrom prefect.server.database import provide_database_interface\n"
            "asyncio.run(provide_database_interface().create_db())\n")


def template_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pcdb"
    return cache / f"prefect-{version('prefect')}-empty.db"


def template_database(timeout: float = 600) -> Path:
    """The migrated, empty database of the installed Prefect, made on first use (a child
    process runs Prefect's migrations on a private temporary file, renamed into place whole:
    two commands making it at once each make their own, and one wins)."""
    path = template_path()
    if path.exists():
        return path
    private_dir(path.parent)
    work = Path(tempfile.mkdtemp(prefix=".template-", dir=path.parent))
    try:
        made = work / "prefect.db"
        subprocess.run([sys.executable, "-c", _MIGRATE], check=True, capture_output=True, timeout=timeout,
                       env={**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
                            "PREFECT_HOME": str(work), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{made}"})
        with contextlib.closing(sqlite3.connect(made)) as db:
            with db:
                db.execute("DELETE FROM configuration")        # never a key, or any setting, to share
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")      # every page in the file itself
        os.chmod(made, FILE)
        os.replace(made, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def seed_database(path: Path) -> bool:
    """Make the new database ``path`` a copy of the template (0600); an existing database is
    never touched. False when nothing was copied: ``path`` exists, or the template could not be
    made (the server then migrates an empty database itself, as Prefect does)."""
    if path.exists():
        return False
    try:
        template = template_database()
    except (OSError, subprocess.SubprocessError, sqlite3.Error):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)     # its mode is its owner's (the home's) to set
    copy = path.with_name(f".{path.name}.{os.getpid()}.seed")
    try:
        shutil.copyfile(template, copy)
        os.chmod(copy, FILE)
        os.link(copy, path)                 # fails if a database appeared meanwhile: that one stays
    except FileExistsError:
        return False
    finally:
        copy.unlink(missing_ok=True)
    return True
