"""Phase 4: the service schema, its versioned migrations and the monthly KOS-log partitions.

Migrations are the files ``pcdb/sql/migrations/NNNN_name.sql``, applied once each, in order, in one
transaction per file, recorded with a checksum in ``pcdb.pcdb_schema_migrations``. A file
changed after it was applied is an error (add a new migration instead).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql as psql

from pcdb import clock
from pcdb.changes import Change
from pcdb.errors import TargetError
from pcdb.sql import SQL_DIR, query

MIGRATIONS_DIR = SQL_DIR / "migrations"
LEDGER_SCHEMA = "pcdb"  # pcdb's own bookkeeping, apart from the service schema and its grants
KOS_LOG = "pc_kos_integration_log"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files, in version order."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        number, _, _ = path.stem.partition("_")
        if not number.isdigit():
            raise TargetError(f"{path}: a migration file name starts with its version, e.g. 0002_name.sql")
        found.append(Migration(int(number), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise TargetError(f"two migration files share a version in {folder}: {versions}")
    return found


def _q(name: str, **identifiers: str) -> psql.Composed:
    return psql.SQL(query("install.sql", name)).format(
        **{k: psql.Identifier(v) for k, v in identifiers.items()})


def migration_plan(conn: psycopg.Connection, schema: str, folder: Path = MIGRATIONS_DIR) -> Change:
    """Read-only: the migrations ensure_schema would apply."""
    done: dict[int, str] = {}
    if conn.execute(query("catalog.sql", "relation_exists"),
                    (f"{LEDGER_SCHEMA}.pcdb_schema_migrations",)).fetchone()[0]:
        done = {v: n for v, n, _ in conn.execute(_q("applied_migrations", schema=LEDGER_SCHEMA))}
    pending = [m.name for m in migrations(folder) if m.version not in done]
    if not pending:
        return Change("schema", schema, "unchanged", notes=(f"{len(done)} migration(s) applied earlier",))
    return Change("schema", schema, "updated" if done else "created", diff={"migrations": (sorted(done.values()), pending)})


def ensure_schema(conn: psycopg.Connection, schema: str, folder: Path = MIGRATIONS_DIR) -> Change:
    """Create the schema and apply the migrations not applied yet.

    Raises:
        TargetError: an applied migration's file has changed since.
    """
    applied_now = []
    with conn.transaction():
        conn.execute(query("install.sql", "migration_lock"))
        created = conn.execute(query("catalog.sql", "schema_missing"),
                               (schema,)).fetchone()[0]
        for name in (schema, LEDGER_SCHEMA):
            conn.execute(psql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psql.Identifier(name)))
        conn.execute(_q("create_migrations_table", schema=LEDGER_SCHEMA))
        done = {v: (n, c) for v, n, c in conn.execute(_q("applied_migrations", schema=LEDGER_SCHEMA))}
        for migration in migrations(folder):
            if migration.version in done:
                if done[migration.version][1] != migration.checksum:
                    raise TargetError(f"migration {migration.name} changed after it was applied "
                                      f"(checksum {done[migration.version][1]} -> {migration.checksum}); "
                                      "never edit an applied migration, add a new one")
                continue
            conn.execute(psql.SQL("SET LOCAL search_path TO {}, pg_catalog").format(psql.Identifier(schema)))
            conn.execute(migration.text)
            conn.execute(_q("record_migration", schema=LEDGER_SCHEMA),
                         {"version": migration.version, "name": migration.name, "checksum": migration.checksum})
            applied_now.append(migration.name)
    if not applied_now:
        return Change("schema", schema, "unchanged", notes=(f"{len(done)} migration(s) applied earlier",))
    return Change("schema", schema, "created" if created else "updated",
                  diff={"migrations": (sorted(n for n, _ in done.values()), applied_now)})


def month_starts(today: date, ahead: int) -> list[date]:
    """First days of the current month and the ``ahead`` months after it."""
    out = []
    year, month = today.year, today.month
    for _ in range(ahead + 1):
        out.append(date(year, month, 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def partition_name(month: date) -> str:
    return f"{KOS_LOG}_y{month.year:04d}m{month.month:02d}"


def ensure_log_partitions(conn: psycopg.Connection, schema: str, timezone: str, ahead: int,
                          now: datetime | None = None, lock_timeout: str = "2s") -> Change:
    """Monthly partitions of the KOS log from this month to ``ahead`` months later (business time zone).

    Each is created as a table of its own and then ATTACHed: ATTACH takes only SHARE UPDATE
    EXCLUSIVE on the log, so the application's inserts never queue behind it (CREATE TABLE …
    PARTITION OF would take ACCESS EXCLUSIVE). A partition whose attach waited longer than
    ``lock_timeout`` is left detached and named in the notes (``deferred: …``); the next call
    attaches it."""
    zone = ZoneInfo(timezone)
    today = (now or clock.now().astimezone(zone)).astimezone(zone).date()
    existing = {r[0] for r in conn.execute(query("install.sql", "existing_partitions"),
                                           {"schema": schema, "table": KOS_LOG})}
    starts = month_starts(today, ahead + 1)
    created, deferred = [], []
    for start, end in zip(starts, starts[1:]):
        name = partition_name(start)
        if name in existing:
            continue
        try:
            with conn.transaction():
                conn.execute(psql.SQL("SET LOCAL lock_timeout = {}").format(psql.Literal(lock_timeout)))
                conn.execute(psql.SQL(query("install.sql", "create_partition_table")).format(
                    schema=psql.Identifier(schema), partition=psql.Identifier(name), table=psql.Identifier(KOS_LOG)))
                conn.execute(psql.SQL(query("install.sql", "attach_partition")).format(
                    schema=psql.Identifier(schema), partition=psql.Identifier(name), table=psql.Identifier(KOS_LOG),
                    start=psql.Literal(datetime(start.year, start.month, 1, tzinfo=zone)),
                    end=psql.Literal(datetime(end.year, end.month, 1, tzinfo=zone))))
        except psycopg.errors.LockNotAvailable:
            deferred.append(f"deferred: {name} (an application transaction held the log longer than {lock_timeout})")
            continue
        created.append(name)
    if not created:
        return Change("partitions", KOS_LOG, "unchanged", notes=(f"{len(existing)} partition(s)", *deferred))
    return Change("partitions", KOS_LOG, "created" if not existing else "updated",
                  diff={"partitions": (sorted(existing), created)}, notes=tuple(deferred))
