"""Nightly backup verification (R-BAK-1/2, §8.1.1): a backup counts as verified only when it
has been restored and checked.

The daily checks read the backup facts; the restore test restores the latest restorable point
into a throw-away server and proves it: amcheck over every table and index, row counts and
content checksums per table equal to the source at a marked moment, the schema objects and
roles present. The throw-away server is deleted in ``finally``, whatever happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql as psql

from pcdb import clock
from pcdb.checks import CheckResult
from pcdb.config import Environment
from pcdb.sql import query
from pcdb.steps import Steps
from pcdb.targets.base import Backups, Endpoint, throwaway_name

PORT = Backups   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)

Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


RESTORE_TEST_MAX_AGE = timedelta(days=8)  # weekly restore test (§8.1.1) plus a day's slack


def _deferred(name: str, requirement: str, detail: str, last_restore: datetime | None, restore_now: bool,
              now: datetime) -> CheckResult:
    """A check the platform cannot show (Azure keeps WAL and backup files to itself): it is the
    restore test's, and passes only when a restore test passed in the last 8 days (or runs now)."""
    if restore_now:
        return CheckResult(name, requirement, True, f"{detail}; deferred to this run's restore test (below)")
    if last_restore is None:
        return CheckResult(name, requirement, False, f"{detail}; deferred to the restore test, and no passing restore "
                                                     "test is in the run ledger: run `pcdb verify-backups --restore`")
    days = (now - last_restore).total_seconds() / 86400
    return CheckResult(name, requirement, days <= RESTORE_TEST_MAX_AGE.days,
                       f"{detail}; deferred to the restore test: the last one passed on "
                       f"{last_restore.isoformat(timespec='minutes')} ({days:.1f} days ago, bound "
                       f"{RESTORE_TEST_MAX_AGE.days} days)")


def daily_checks(target: Backups, env: Environment, now: datetime | None = None,
                 last_restore: datetime | None = None, restore_now: bool = False) -> tuple[list[CheckResult], dict]:
    """Latest backup fresh, retention, geo copy, WAL archive without gaps, manifest verified.

    Args:
        last_restore: when the last restore test passed (the run ledger), for what the platform
            cannot show (archive_ok/integrity_ok None).
        restore_now: this run restores too, and proves them itself.
    """
    status = target.backup_status()
    now = now or clock.now()
    bound = env.backup.verification.max_age
    age_hours = (now - status.latest_backup_at).total_seconds() / 3600 if status.latest_backup_at else None
    retention_days = status.retention.days
    results = [
        CheckResult("latest backup is fresh", "R-BAK-2", age_hours is not None and age_hours * 3600 <= bound.total_seconds(),
                    f"latest backup {status.latest_backup_id or '(none)'}, "
                    f"{f'{age_hours:.1f}' if age_hours is not None else '-'} h old (bound {bound.total_seconds() / 3600:.0f} h)"),
        CheckResult("retention", "R-BAK-1", status.retention == env.backup.retention,
                    f"{retention_days} days (spec {env.backup.retention.days})"),
        CheckResult("geo-redundant backup", "R-BAK-1", status.geo_redundant or not env.backup.geo_redundant,
                    "geo copy present and identical" if status.geo_redundant else "geo copy missing or different"),
        CheckResult("WAL archiving current", "R-BAK-1", status.archive_ok, status.archive_detail)
        if status.archive_ok is not None else
        _deferred("WAL archiving current", "R-BAK-1", status.archive_detail, last_restore, restore_now, now),
        CheckResult("backup integrity", "R-BAK-2", status.integrity_ok, status.integrity_detail)
        if status.integrity_ok is not None else
        _deferred("backup integrity", "R-BAK-2", status.integrity_detail, last_restore, restore_now, now),
    ]
    summary = {"latest_backup_age_hours": round(age_hours, 3) if age_hours is not None else None,
               "retention_days": retention_days, "geo_redundant": status.geo_redundant,
               "archive_ok": results[3].passed, "last_restore_test": last_restore.isoformat() if last_restore else None}
    return results, summary


@dataclass
class RestoreTest:
    passed: bool = False
    seconds: float | None = None
    tables_compared: int = 0
    mismatches: list[str] = field(default_factory=list)
    amcheck_ok: bool = False
    server_deleted: bool = False
    detail: str = ""
    bytes: int | None = None          # the restored database's size
    steps: list[dict] = field(default_factory=list)

    @property
    def bytes_per_second(self) -> float | None:
        return round(self.bytes / self.seconds) if self.bytes and self.seconds else None

    def as_dict(self) -> dict:
        return {"passed": self.passed, "seconds": self.seconds, "bytes": self.bytes,
                "bytes_per_second": self.bytes_per_second, "tables_compared": self.tables_compared,
                "mismatches": self.mismatches, "amcheck_ok": self.amcheck_ok,
                "server_deleted": self.server_deleted, "detail": self.detail, "steps": self.steps}


def fingerprints(conn: psycopg.Connection, schema: str) -> dict[str, tuple[int, int]]:
    """table -> (row count, order-independent checksum), in one snapshot when called in a transaction."""
    tables = [r[0] for r in conn.execute(query("verify.sql", "table_fingerprints"), {"schema": schema})]
    out = {}
    for table in tables:
        stmt = psql.SQL(query("verify.sql", "fingerprint_of_table")).format(
            schema=psql.Identifier(schema), table=psql.Identifier(table))
        count, checksum = conn.execute(stmt).fetchone()
        out[table] = (count, int(checksum))
    return out


def _objects(conn: psycopg.Connection, schema: str) -> tuple[set, set]:
    objects = {tuple(r) for r in conn.execute(query("verify.sql", "schema_objects"), {"schema": schema})}
    roles = {r[0] for r in conn.execute(query("verify.sql", "login_roles"))}
    return objects, roles


def restore_test(target: Backups, env: Environment, connect_source: Connect,
                 connect_restored: Callable[[Endpoint], AbstractContextManager[psycopg.Connection]],
                 name: str | None = None, step: Steps | None = None) -> RestoreTest:
    """Restore to a marked moment on a throw-away server and prove it equals the source then,
    step by step: mark and fingerprint the source, restore, amcheck, compare, delete."""
    step = step or Steps()
    schema = env.service.schema_name
    name = name or throwaway_name(env, "restore-test")
    result = RestoreTest()
    step(f"delete a leftover {name}", lambda: target.delete_server(name), retry=True)   # a killed run's

    def mark_and_fingerprint():
        with connect_source() as conn:
            conn.execute(query("verify.sql", "create_pcdb_schema"))
            conn.execute(query("verify.sql", "create_restore_marker"))
            marker = clock.now().strftime("restore-test-%Y%m%dT%H%M%S%f")
            with conn.transaction():
                # The marker and the fingerprints share one snapshot: exact when nothing else
                # commits during these milliseconds; otherwise a busy table may differ by the rows
                # committed in between, and is reported as such.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                source = fingerprints(conn, schema)
                objects, roles = _objects(conn, schema)
                conn.execute(query("verify.sql", "insert_restore_marker"), (marker,))
            return marker, source, objects, roles, conn.execute("SELECT clock_timestamp()").fetchone()[0]

    try:
        marker, source, objects, roles, target_time = step("mark the moment and fingerprint the source",
                                                           mark_and_fingerprint, retry=True)
        started = time.monotonic()
        endpoint = step(f"restore the base backup and the WAL to that moment on {name}",
                        lambda: target.restore_point_in_time(target_time, name))
        result.seconds = round(time.monotonic() - started, 3)
        result.amcheck_ok, amcheck_detail = step("amcheck every B-tree index", lambda: target.amcheck(name), retry=True)

        def compared():
            with connect_restored(endpoint) as restored:
                found = restored.execute(query("verify.sql", "count_restore_marker"), (marker,)).fetchone()[0]
                size = restored.execute(query("verify.sql", "database_size")).fetchone()[0]
                return found, size, fingerprints(restored, schema), _objects(restored, schema)

        found, result.bytes, copy, (r_objects, r_roles) = step("compare fingerprints, objects and roles", compared,
                                                                retry=True)
        result.tables_compared = len(source)
        result.mismatches = [f"{t}: source {source[t][0]} rows, restored {copy.get(t, (None,))[0]}"
                             + ("" if copy.get(t, (None,))[0] != source[t][0] else " (content differs)")
                             for t in source if copy.get(t) != source[t]]
        missing = sorted(objects - r_objects)
        result.mismatches += [f"missing {kind} {obj}" for kind, obj in missing]
        result.mismatches += [f"missing role {r}" for r in sorted(roles - r_roles)]
        result.passed = found == 1 and not result.mismatches and result.amcheck_ok
        result.detail = (f"restored to {target_time.isoformat()} in {result.seconds}s; marker "
                         f"{'found' if found else 'MISSING'}; {result.tables_compared} tables compared, "
                         f"{len(result.mismatches)} mismatch(es); amcheck: {amcheck_detail}")
    except Exception as exc:  # noqa: BLE001 - the test's verdict, not a crash of the runbook
        result.passed = False
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.detail = f"restore test failed: {type(exc).__name__}: {first}"
    finally:
        result.server_deleted = step(f"delete the throw-away server {name}", lambda: _deleted(target, name),
                                     retry=True)
    result.steps = step.as_dicts()
    return result


def _deleted(target: Backups, name: str) -> bool:
    """Delete the server and check it is gone (a second delete finds nothing)."""
    target.delete_server(name)
    return target.delete_server(name).action == "unchanged"
