"""Data-corruption recovery (§12.2.2): put back exactly the damaged rows, without replacing the server.

1. The time is checked first: not in the future, not before the oldest point the backups keep.
2. A new throw-away server is restored to that time.
3. The affected range (``--tables``, ``--where``) is compared row by row, by primary key, with
   the live server: rows the corruption deleted (missing), rows it overwrote (changed), and rows
   written since (extra, kept: they are the service's newer data). ``--where`` is one boolean
   expression checked by :mod:`pcdb.predicate`, never the person's text pasted into SQL; every
   read runs in a READ ONLY transaction with a statement timeout, as ``pcdb_recovery``, a role
   that cannot run programs, read server files or bypass anything (``SET ROLE`` for the session).
4. The rows to put back are exported (JSON lines, 0600) and, after the approval, replayed into
   the live server in one transaction that first locks the live rows by their primary keys (not
   by running the predicate again) and checks they are still those compared.
5. The range is compared again: every damaged row is back and nothing else changed. The
   throw-away server is deleted, also when the recovery fails.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql as psql

from pcdb import clock
from pcdb import predicate as predicates
from pcdb.config import Environment
from pcdb.errors import PcdbError, TargetError
from pcdb.predicate import Predicate
from pcdb.private import private_dir
from pcdb.sql import query
from pcdb.steps import Steps
from pcdb.targets.base import Backups, Connection, Endpoint, throwaway_name
from pcdb.timeline import Timeline


class RecoveryTarget(Connection, Backups, Protocol):
    """The roles of the target port used by the corruption recovery (pcdb.targets.base)."""


PORT = RecoveryTarget   # checked: tests/unit/test_port_roles.py

ROLE = "pcdb_recovery"
STATEMENT_TIMEOUT_MS = 10 * 60 * 1000   # no single read of a recovery runs longer than 10 minutes


def recover_server(env: Environment) -> str:
    return throwaway_name(env, "recover")


@dataclass
class TableDiff:
    name: str                                                 # as PostgreSQL shows it (regclass)
    ident: psql.Identifier                                    # schema and name, quoted by psycopg
    schema: str
    key: list[str]
    columns: list[str]
    missing: dict[str, str] = field(default_factory=dict)    # key -> restored row (deleted by the corruption)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (restored, live)
    extra: int = 0                                            # live rows the restored server never had

    def as_dict(self) -> dict:
        return {"name": self.name, "missing": len(self.missing), "changed": len(self.changed), "extra": self.extra,
                "put_back": len(self.missing) + len(self.changed)}


@dataclass
class RecoveryReport(Timeline):
    to: str
    server: str
    target_rto_seconds: float
    tables: list[TableDiff] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    export: str | None = None
    put_back: int = 0
    verified: bool = False
    recovery_seconds: float | None = None
    timeline: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: str | None = None
    steps: list[dict] = field(default_factory=list)    # pcdb.steps records: name, began, seconds, outcome

    @property
    def met(self) -> bool:
        return self.verified and self.recovery_seconds is not None and self.recovery_seconds <= self.target_rto_seconds

    def as_dict(self) -> dict:
        return {"to": self.to, "restored_server": self.server, "tables": [t.as_dict() for t in self.tables],
                "skipped": self.skipped, "put_back": self.put_back, "export": self.export, "verified": self.verified,
                "recovery_seconds": self.recovery_seconds, "target_rto_seconds": self.target_rto_seconds,
                "met": self.met, "timeline": self.timeline_dicts(), "steps": self.steps,
                "notes": self.notes, "report": self.report}


def earliest_point(target: RecoveryTarget, env: Environment) -> datetime | None:
    """The oldest time a restore can reach: the oldest backup the retention keeps."""
    backups = target.list_backups()
    oldest = backups[0].finished_at if backups else None
    horizon = clock.now() - env.backup.retention
    return max(oldest, horizon) if oldest else None


def check_time(target: RecoveryTarget, env: Environment, to: datetime) -> None:
    """Refuse a time in the future or before the retention, before anything is made."""
    if to.tzinfo is None:
        raise PcdbError(f"--to {to.isoformat()} has no time zone; add one, e.g. +09:00 or Z")
    now = clock.now()
    if to > now:
        raise PcdbError(f"--to {to.isoformat()} is in the future (now {now.isoformat(timespec='seconds')}): "
                        "recovery restores to a moment before the corruption")
    earliest = earliest_point(target, env)
    if earliest is None:
        raise PcdbError(f"{env.server.name} has no backup to restore from: nothing to recover with")
    if to < earliest:
        raise PcdbError(f"--to {to.isoformat()} is before the retention: the earliest point the backups can restore "
                        f"is {earliest.isoformat(timespec='seconds')} (backup.retention "
                        f"{env.backup.retention.days} days); choose a later time")


def _q(name: str, **parts) -> psql.Composed:
    return psql.SQL(query("recovery.sql", name)).format(**parts)


def _tables(conn: psycopg.Connection, names: list[str] | None, env: Environment,
            report: RecoveryReport) -> list[TableDiff]:
    """The tables to compare, each with its key; a named table that does not exist or has no
    primary key is an error; an unnamed one without a key is skipped and reported."""
    if names:
        resolved = []
        for name in names:
            row = conn.execute(query("recovery.sql", "resolve_table"), {"name": name}).fetchone()
            if row is None:
                raise PcdbError(f"--tables: {name!r} is not a table of {env.service.database} on {env.server.name}")
            resolved.append(row)
    else:
        resolved = conn.execute(query("recovery.sql", "user_tables")).fetchall()
    out = []
    for table, schema, relname in resolved:
        key = [r[0] for r in conn.execute(query("recovery.sql", "primary_key"), {"table": table})]
        if not key:
            if names:
                raise PcdbError(f"--tables: {table} has no primary key: its rows cannot be told apart, so they "
                                "cannot be put back one by one; restore it by hand from the restored server")
            report.skipped.append(f"{table} (no primary key)")
            continue
        columns = [r[0] for r in conn.execute(query("recovery.sql", "writable_columns"), {"table": table})]
        out.append(TableDiff(table, psql.Identifier(schema, relname), schema, key, columns))
    return out


def _parts(diff: TableDiff, where: Predicate | None) -> dict:
    return {"table": diff.ident, "key": psql.SQL(", ").join(map(psql.Identifier, diff.key)),
            "where": psql.SQL(where.sql) if where else psql.SQL("TRUE")}   # the checked tree, printed again


def recovery_session(conn: psycopg.Connection, admin: str, diffs: list[TableDiff]) -> None:
    """Make the session ``pcdb_recovery``: a NOLOGIN role (made once, granted to the admin so the
    admin may take it on) with only SELECT, INSERT and UPDATE on the compared tables. Whatever
    runs in the session runs with its rights, not the admin's: no COPY TO PROGRAM, no server
    files, no other table."""
    if not conn.execute(query("recovery.sql", "role_exists"), {"role": ROLE}).fetchone()[0]:
        conn.execute(psql.SQL(query("recovery.sql", "create_role")).format(role=psql.Identifier(ROLE)))
    conn.execute(psql.SQL(query("recovery.sql", "grant_role")).format(role=psql.Identifier(ROLE),
                                                                       admin=psql.Identifier(admin)))
    for diff in diffs:
        conn.execute(psql.SQL(query("recovery.sql", "grant_table")).format(
            role=psql.Identifier(ROLE), table=diff.ident, schema=psql.Identifier(diff.schema)))
    conn.execute(psql.SQL("SET ROLE {}").format(psql.Identifier(ROLE)))


def _read_only(conn: psycopg.Connection):
    """A READ ONLY transaction with the statement timeout and ``search_path = pg_catalog``."""
    @contextmanager
    def opened():
        with conn.transaction():
            conn.execute(query("recovery.sql", "read_only"))
            conn.execute(query("recovery.sql", "guard"), {"timeout": STATEMENT_TIMEOUT_MS})
            yield
    return opened()


def _rows(conn: psycopg.Connection, diff: TableDiff, where: Predicate | None) -> dict[str, str]:
    with _read_only(conn):
        return dict(conn.execute(_q("rows_in_range", **_parts(diff, where))).fetchall())


def check_where(conn: psycopg.Connection, diff: TableDiff, where: Predicate) -> None:
    """The expression reads only the table's columns and plans on it (EXPLAIN, never run).

    Raises:
        PcdbError: naming the table and what is wrong.
    """
    columns = {r[0] for r in conn.execute(query("recovery.sql", "all_columns"), {"table": diff.name})}
    predicates.check_columns(where, diff.name, columns)
    try:
        with _read_only(conn):
            conn.execute(_q("check_where", **_parts(diff, where)))
    except psycopg.Error as exc:
        raise PcdbError(f"--where {where.text!r} is not valid on {diff.name}: "
                        f"{str(exc).strip().splitlines()[0]}") from None


def compare(restored: psycopg.Connection, live: psycopg.Connection, diff: TableDiff, where: Predicate | None) -> None:
    before, now = _rows(restored, diff, where), _rows(live, diff, where)
    diff.missing = {k: v for k, v in before.items() if k not in now}
    diff.changed = {k: (v, now[k]) for k, v in before.items() if k in now and now[k] != v}
    diff.extra = sum(1 for k in now if k not in before)


def replay(live: psycopg.Connection, diffs: list[TableDiff]) -> int:
    """Put the restored rows back in one transaction; refused (nothing written) when a live row
    changed since the comparison. The live rows are locked by their primary keys."""
    count = 0
    with live.transaction():
        live.execute(query("recovery.sql", "guard"), {"timeout": STATEMENT_TIMEOUT_MS})
        for diff in diffs:
            if not diff.missing and not diff.changed:
                continue
            rows = [json.loads(v) for v in diff.missing.values()] + [json.loads(r) for r, _ in diff.changed.values()]
            parts = _parts(diff, None)
            now = dict(live.execute(_q("lock_rows_by_key", **parts), {"keys": json.dumps(rows)}).fetchall())
            moved = [k for k in diff.missing if k in now] + [k for k, (_, was) in diff.changed.items() if now.get(k) != was]
            if moved:
                raise PcdbError(f"{diff.name}: {len(moved)} row(s) of the range changed since the comparison (e.g. key "
                                f"{moved[0]}); nothing was written. Run the recovery again")
            columns = psql.SQL(", ").join(map(psql.Identifier, diff.columns))
            excluded = psql.SQL(", ").join(psql.SQL("EXCLUDED.{}").format(psql.Identifier(c)) for c in diff.columns)
            statement = _q("put_back", **parts, columns=columns, excluded=excluded)
            live.execute(statement, {"rows": json.dumps(rows)})
            count += len(rows)
    return count


def export(diffs: list[TableDiff], folder: Path) -> Path:
    """The rows to put back, one JSON object per line with its table: readable by the owner only."""
    private_dir(folder)
    path = folder / f"recover-rows-{clock.now():%Y%m%dT%H%M%SZ}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for diff in diffs:
            for kind, rows in (("missing", diff.missing.values()), ("changed", (r for r, _ in diff.changed.values()))):
                for row in rows:
                    out.write(json.dumps({"table": diff.name, "kind": kind, "row": json.loads(row)}) + "\n")
    return path


def recover(target: RecoveryTarget, env: Environment, password: str, to: datetime, tables: list[str] | None,
            where: str | None, approve: Callable[[dict], None], export_to: Path,
            step: Steps | None = None) -> RecoveryReport:
    """The whole recovery, step by step; the approval is asked between the steps; the throw-away
    server is deleted whatever happens.

    Raises:
        PredicateError: ``where`` is not one allowed expression (before anything is made).
    """
    step = step or Steps()
    started = time.monotonic()
    predicate = predicates.parse(where) if where is not None else None   # before anything else
    report = RecoveryReport(to.isoformat(), recover_server(env), env.dr.data_corruption.rto.total_seconds())
    check_time(target, env, to)
    admin = env.server.admin.user
    live_info = target.endpoint("primary").conninfo(admin, password)

    def planned() -> list[TableDiff]:
        with psycopg.connect(live_info, autocommit=True) as live:
            found = _tables(live, tables, env, report)
            recovery_session(live, admin, found)
            if predicate is not None:
                for diff in found:
                    check_where(live, diff, predicate)
        return found

    diffs = step("check the tables and the predicate (planned, nothing run)", planned)
    if not diffs:
        raise PcdbError("no table to compare: name them with --tables (each needs a primary key)")
    step("delete a leftover recovery server", lambda: target.delete_server(report.server), retry=True)

    @contextmanager
    def both(endpoint: Endpoint):
        with psycopg.connect(endpoint.conninfo(admin, password), autocommit=True) as restored, \
                psycopg.connect(live_info, autocommit=True) as live:
            recovery_session(restored, admin, diffs)
            recovery_session(live, admin, diffs)
            yield restored, live

    try:
        endpoint = step(f"restore to {to.isoformat()} on {report.server}",
                        lambda: target.restore_point_in_time(to, report.server))
        report.mark(f"restored {report.server} to {to.isoformat()}")

        def compared() -> None:
            with both(endpoint) as (restored, live):
                for diff in diffs:
                    compare(restored, live, diff, predicate)

        step("compare the range with the live data, row by row", compared)
        report.tables = diffs
        damaged = sum(len(d.missing) + len(d.changed) for d in diffs)
        report.mark(f"compared: {damaged} damaged row(s) to put back in "
                    f"{sum(1 for d in diffs if d.missing or d.changed)} table(s); "
                    f"{sum(d.extra for d in diffs)} newer row(s) kept")
        if damaged:
            report.export = str(step("export the rows to put back", lambda: export(diffs, export_to)))
            report.mark(f"rows to put back exported to {report.export}")
            approve({"put_back": {d.name: d.as_dict()["put_back"] for d in diffs if d.missing or d.changed},
                     "export": report.export})
            report.mark("replay approved")

            def replayed() -> int:
                with psycopg.connect(live_info, autocommit=True) as live:
                    recovery_session(live, admin, diffs)
                    return replay(live, diffs)

            report.put_back = step(f"put back {damaged} row(s) in one transaction", replayed)
            report.mark(f"{report.put_back} row(s) put back into the live server in one transaction")

        def verified() -> bool:
            check = [TableDiff(d.name, d.ident, d.schema, d.key, d.columns) for d in diffs]
            with both(endpoint) as (restored, live):
                for again in check:
                    compare(restored, live, again, predicate)
            return all(not c.missing and not c.changed and c.extra == d.extra
                       for d, c in zip(diffs, check, strict=True))

        report.verified = step("verify: compare the range again", verified, retry=True)
        report.mark("verified: every damaged row is back and the newer rows are untouched" if report.verified
                    else "NOT verified: the range still differs from the restored server")
        report.recovery_seconds = round(time.monotonic() - started, 3)
    finally:
        try:
            step(f"delete the throw-away server {report.server}", lambda: target.delete_server(report.server),
                 retry=True)
            report.mark(f"throw-away server {report.server} deleted")
        except (TargetError, PcdbError) as exc:
            report.notes.append(f"the throw-away server {report.server} could not be deleted ({exc}); "
                                "the next recovery deletes it first")
    return report
