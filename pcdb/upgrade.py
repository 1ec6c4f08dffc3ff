"""The major version upgrade (#27): the prechecks, and the rehearsal on a restored copy.

Prechecks read only, and each failing one says what to do: pg_upgrade and Azure's in-place
upgrade both refuse a server with something below, and they find it halfway, in the maintenance
window. The rehearsal restores the latest backup to a throw-away server (the restore test's
machinery: the source marked and fingerprinted, the copy compared with it), upgrades that copy
with pg_upgrade (``--check`` first), gathers the planner's statistics, runs the checks of Phase 7
that apply to one server, and deletes the copy. Its result and durations are the upgrade's plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import psycopg
from psycopg import sql as psql

from pcdb import backups, checks
from pcdb.checks import CheckResult
from pcdb.config import Environment
from pcdb.probe import ProbeWriter
from pcdb.sql import query
from pcdb.steps import Steps
from pcdb.targets.base import Backups, Connection, Endpoint, Provisioning, Telemetry, Upgrades, throwaway_name


class UpgradeTarget(Connection, Provisioning, Backups, Telemetry, Upgrades, Protocol):
    """The roles of the target port the upgrade uses (pcdb.targets.base)."""


PORT = UpgradeTarget   # checked: tests/unit/test_port_roles.py
REQUIREMENT = "R-SYS-2"

# Server parameters each major removed or renamed, from PostgreSQL's release notes (the
# "Migration to Version N" sections): a spec that sets one would stop the upgraded server.
REMOVED_PARAMETERS: dict[int, dict[str, str]] = {
    15: {"stats_temp_directory": "removed in 15: the statistics live in shared memory"},
    16: {"vacuum_defer_cleanup_age": "removed in 16",
         "promote_trigger_file": "removed in 16: promote with pg_ctl promote or pg_promote()",
         "force_parallel_mode": "renamed debug_parallel_query in 16"},
    17: {"old_snapshot_threshold": "removed in 17", "db_user_namespace": "removed in 17",
         "trace_recovery_messages": "removed in 17"},
}


def _check(name: str, passed: bool, evidence: str, fix: str | None = None, **details) -> CheckResult:
    return CheckResult(name, REQUIREMENT, passed, evidence, {**details, **({"fix": fix} if not passed and fix else {})})


def prechecks(target: UpgradeTarget, env: Environment, conn: psycopg.Connection, to: int) -> list[CheckResult]:
    """Everything pg_upgrade and Azure's upgrade refuse, read from the running primary (``conn``)."""
    current = conn.execute(query("upgrade.sql", "server_major")).fetchone()[0]
    results = []
    why_not = target.upgrade_available(str(to))
    results.append(_check(
        "target version", to > current and why_not is None,
        f"PostgreSQL {current} to {to}" + ("" if to > current else f": {to} is not newer than {current}")
        + (f": {why_not}" if why_not else ""),
        fix=why_not if why_not else f"choose a major newer than {current}", current=current, to=to))

    extensions = conn.execute(query("upgrade.sql", "installed_extensions")).fetchall()
    problems = {name: why for name, _ in extensions if (why := target.extension_problem(name, str(to)))}
    results.append(_check(
        "extensions exist for the target", not problems,
        f"{len(extensions)} installed in {env.service.database} ({', '.join(n for n, _ in extensions)}); "
        + (f"not carried to {to}: {', '.join(problems)}" if problems else f"each available for {to}"),
        fix="; ".join(f"{name}: {why}" for name, why in problems.items()), missing=sorted(problems)))

    reg = conn.execute(query("upgrade.sql", "reg_columns")).fetchall()
    results.append(_check(
        "no reg* data types in user tables", not reg,
        "none" if not reg else "; ".join(f"{c} ({t})" for c, t in reg),
        fix="change those columns to text or oid (ALTER TABLE ... ALTER COLUMN ... TYPE text): pg_upgrade "
            "cannot carry OIDs that change in the new cluster", columns=[c for c, _ in reg]))

    prepared = conn.execute(query("upgrade.sql", "prepared_transactions")).fetchall()
    results.append(_check(
        "no prepared transactions", not prepared,
        "none" if not prepared else f"{len(prepared)}: " + ", ".join(f"{g} (by {o} in {d} since {p})"
                                                                       for g, o, d, p in prepared),
        fix="finish each with COMMIT PREPARED or ROLLBACK PREPARED (its owner decides which)",
        gids=[g for g, *_ in prepared]))

    slots = conn.execute(query("upgrade.sql", "logical_slots")).fetchall()
    results.append(_check(
        "no logical replication slots", not slots,
        "none" if not slots else ", ".join(f"{s} ({p} in {d})" for s, p, d in slots),
        fix="drop them (pg_drop_replication_slot) after their subscribers stop, and re-create them after the "
            "upgrade: Azure's upgrade refuses a server that has one", slots=[s for s, *_ in slots]))

    size = conn.execute(query("upgrade.sql", "databases_size")).fetchone()[0]
    sample = target.metrics()
    free = sample.storage_quota_bytes - sample.storage_used_bytes
    results.append(_check(
        "free storage", free >= size,
        f"{free} bytes free for {size} bytes of databases (pg_upgrade in copy mode writes them again)",
        fix="grow the storage (R-SYS-2's autogrow, or the spec's storage size) or free space before the "
            "upgrade", free_bytes=free, databases_bytes=size))

    removed = {name: why for major in range(current + 1, to + 1)
               for name, why in REMOVED_PARAMETERS.get(major, {}).items()}
    set_here = sorted(n for n in env.desired_parameters() if n in removed)
    results.append(_check(
        "parameters the target removed or renamed", not set_here,
        "none of the spec's" if not set_here else "; ".join(f"{n}: {removed[n]}" for n in set_here),
        fix="take them out of the spec's parameters (or use the new name) before the upgrade", parameters=set_here))
    return results


def after_upgrade(target: Provisioning, connect: Callable) -> dict:
    """What pg_upgrade leaves to do on the upgraded servers: the spec's parameters applied on the
    new major (a library it has and the old one lacked is loaded now), every extension updated to
    the new major's version, and ANALYZE (pg_upgrade carries no statistics)."""
    change = target.ensure_parameters()
    updated = []
    with connect() as conn:
        for name, installed, default in conn.execute(query("upgrade.sql", "outdated_extensions")).fetchall():
            conn.execute(psql.SQL(query("upgrade.sql", "update_extension")).format(psql.Identifier(name)))
            updated.append(f"{name} {installed} to {default}")
    return {"parameters": " ".join([change.action, *change.notes]), "extensions_updated": updated,
            "analyze_seconds": analyze(connect)}


def analyze(connect: Callable) -> float:
    """Gather the planner's statistics after pg_upgrade (it carries none); the seconds it took."""
    began = time.monotonic()
    with connect() as conn:
        conn.execute(query("upgrade.sql", "analyze"))
    return round(time.monotonic() - began, 3)


@dataclass
class Rehearsal:
    """A rehearsal's result: the upgrade's plan (its durations) and whether the copy held."""

    to: int
    passed: bool = False
    upgraded_from: str | None = None
    upgraded_to: str | None = None
    restore: dict = field(default_factory=dict)       # the restore test's result on the upgraded copy
    pg_upgrade_seconds: dict = field(default_factory=dict)
    analyze_seconds: float | None = None
    checks: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict:
        return {"to": self.to, "passed": self.passed, "from_version": self.upgraded_from,
                "to_version": self.upgraded_to, "seconds": self.seconds, "pg_upgrade_seconds": self.pg_upgrade_seconds,
                "analyze_seconds": self.analyze_seconds, "checks": self.checks, "restore": self.restore,
                "detail": self.detail}


def rehearse(target: UpgradeTarget, env: Environment, to: int, connect_source: Callable,
             connect_restored: Callable[[Endpoint], AbstractContextManager[psycopg.Connection]],
             step: Steps | None = None) -> Rehearsal:
    """Restore the latest backup to a throw-away server, upgrade it to ``to``, prove it."""
    step = step or Steps()
    result = Rehearsal(to)
    started = time.monotonic()

    def upgraded(endpoint: Endpoint) -> Endpoint:
        done = step(f"pg_upgrade the copy to {to} (--check first)", lambda: target.upgrade_copy(name, str(to)))
        result.upgraded_from, result.upgraded_to, result.pg_upgrade_seconds = done["from"], done["to"], done["seconds"]

        result.analyze_seconds = step("ANALYZE the upgraded copy", lambda: analyze(lambda: connect_restored(endpoint)),
                                      retry=True)

        def one_server_checks() -> list[CheckResult]:
            with connect_restored(endpoint) as conn:
                return [*checks.server_checks(conn, env), checks.check_non_tls_refused(endpoint)]
        result.checks = [c.as_dict() for c in step("Phase 7's checks of one server on the copy", one_server_checks)]
        return endpoint

    name = throwaway_name(env, "upgrade-rehearsal")
    tested = backups.restore_test(target, env, connect_source, connect_restored, name=name, step=step, then=upgraded)
    result.restore = tested.as_dict()
    failed = [c["name"] for c in result.checks if not c["passed"]]
    result.passed = tested.passed and bool(result.checks) and not failed
    result.seconds = round(time.monotonic() - started, 3)
    result.detail = (f"{result.upgraded_from} to {result.upgraded_to} on a copy restored from the latest backup: "
                     f"pg_upgrade {result.pg_upgrade_seconds}; ANALYZE {result.analyze_seconds} s; "
                     f"{len(result.checks) - len(failed)}/{len(result.checks)} checks passed"
                     + (f" (failed: {', '.join(failed)})" if failed else "") + f"; {tested.detail}"
                     if result.upgraded_to else tested.detail)
    return result


# -- the rule on production: a passing rehearsal of the same upgrade, from the last 7 days ------

REHEARSAL_VALID = timedelta(days=7)


def recent_rehearsal(rows: list[dict], environment: str, to: int, current: int, now: datetime) -> dict | None:
    """The newest ledger row (``rows``: the upgrade runbook's, newest first) of a rehearsal that
    passed on ``environment``, from ``current`` to ``to``, within REHEARSAL_VALID of ``now``:
    what the upgrade's signed plan names; None when there is none."""
    for row in rows:
        figures = row.get("figures") or {}
        ended = row.get("ended_at")
        if (row.get("environment") == environment and figures.get("to") == to
                and figures.get("rehearsal_passed") is True and ended is not None and now - ended <= REHEARSAL_VALID
                and str(figures.get("from_version") or "").split(".")[0] == str(current)):
            return {"run_id": row["run_id"], "ended_at": ended.isoformat(), "passed": True,
                    "from_version": figures.get("from_version"), "to_version": figures.get("to_version"),
                    "seconds": figures.get("rehearsal_seconds"), "detail": figures.get("rehearsal_detail", "")}
    return None


class ApplicationProbe:
    """A probe writer on the application's path across the upgrade: its downtime as the
    application sees it (first failed write to the first one after it), and the acknowledged rows
    the upgrade lost (read back after; there must be none). Its table is dropped after."""

    def __init__(self, target: Connection, env: Environment, password: str, table: str, after_timeout: float = 300):
        user = env.server.admin.user
        self.path = lambda: target.endpoint("application").conninfo(user, password)
        self.writer = ProbeWriter(self.path(), table=table, interval=0.05, resolve=self.path)
        self.after_timeout = after_timeout
        self.outage_seconds: float | None = None
        self.lost: int | None = None
        self.note = ""

    def across(self, operation: Callable[[], dict]) -> dict:
        try:
            self.writer.start()
            self.writer.wait_for_rows(3)
        except (psycopg.Error, TimeoutError) as exc:   # e.g. a killed upgrade left the primary down
            if self.writer.running:
                self.writer.stop()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.note = f"the application's path took no write before the upgrade ({first}): no downtime measured"
            return operation()
        try:
            return operation()
        finally:
            try:
                self.writer.wait_for_rows(3, timeout=self.after_timeout)
            except TimeoutError as exc:
                self.note = f"the application's path took no write within {self.after_timeout:.0f} s after: {exc}"
            measured = self.writer.stop()
            self.outage_seconds = (round(measured.outage_seconds, 3) if measured.outage_seconds is not None
                                   else 0.0 if measured.first_failure is None else None)
            try:
                self.lost = len(self.writer.missing(self.path()))
                self.writer.drop_table(self.path())
            except psycopg.Error as exc:
                self.note += f" the probe's rows could not be read back: {str(exc).strip()}"

    def figures(self) -> dict:
        measured = self.writer.result
        return {"downtime_seconds": self.outage_seconds, "probe_rows_acknowledged": len(measured.acknowledged),
                "probe_rows_lost": self.lost, "probe_rows_in_doubt": len(measured.in_doubt),
                **({"probe_note": self.note.strip()} if self.note else {})}
