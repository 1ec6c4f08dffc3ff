"""Monthly maintenance (§8.3.1, R-OPS-3) as plain steps; flows/maintenance.py adds Prefect.

Every step reads what exists, plans, and (unless a dry run) changes only what the plan says,
under ``SET lock_timeout``: a step blocked by an application transaction gives up and is
deferred to the next run, never waited on. What a careful DBA does by hand and is risky
unattended (dropping an unused index, VACUUM FULL) is only recommended.

The KOS log's partition lifecycle is the one step that deletes data. An expired partition goes
archive (pg_dump -Fc + SHA-256 into the archive store) -> proof (the stored archive, fetched
back, its SHA-256 checked and restored into a scratch database, rows and an order-independent
content checksum compared with the live partition) -> DETACH CONCURRENTLY -> the content
checked once more against the proof -> DROP. Each state is recorded in ``pcdb.partition_archive``
before the step it names, so a run killed anywhere is finished by the next one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql as psql

from pcdb import clock, crash, schema, security
from pcdb.checks import CheckResult
from pcdb.context import RunbookContext
from pcdb.errors import PcdbError, TargetError
from pcdb.sandbox import proc
from pcdb.sql import query
from pcdb.steps import Steps
from pcdb.targets.base import Archive, Connection, Provisioning, Telemetry


class MaintenanceTarget(Connection, Provisioning, Telemetry, Archive, Protocol):
    """The roles of the target port used by monthly maintenance (pcdb.targets.base)."""


PORT = MaintenanceTarget   # checked: tests/unit/test_port_roles.py

logger = logging.getLogger("pcdb.maintenance")

STEPS = ("partitions", "statistics", "indexes", "slow_queries", "accounts", "hygiene")
PROOF_DATABASE = "pcdb_archive_proof"
PARTITION_NAME = re.compile(rf"^{schema.KOS_LOG}_y(\d{{4}})m(\d{{2}})$")
_BOUNDS = re.compile(r"^FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)$")
_CHECKSUM = ("SELECT count(*), coalesce(sum(('x' || pg_catalog.left(pg_catalog.md5(t::text), 16))::bit(64)::bigint"
             "::numeric), 0) FROM {} t")


def _q(name: str) -> str:
    return query("maintenance.sql", name)


@dataclass
class Outcome:
    """What a run did (or, in a dry run, would do): the JSON contract of `pcdb maintain`."""

    dry_run: bool
    partitions: dict = field(default_factory=lambda: {"created": [], "archived": [], "detached": [], "dropped": [],
                                                      "ahead_months": 0})
    statistics: dict = field(default_factory=lambda: {"analyzed": [], "vacuumed": []})
    indexes: dict = field(default_factory=lambda: {"unused": [], "invalid": [], "reindexed": [], "bloated": []})
    slow_queries: list = field(default_factory=list)
    accounts: dict = field(default_factory=lambda: {"password_age_days": {}, "unexpected_roles": [],
                                                    "grant_drift": [], "superusers": [], "password_expired": [],
                                                    "failed_logins": None})
    hygiene: dict = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    verified: bool | None = None                           # read back after the run (None: a dry run)
    recommended: list[str] = field(default_factory=list)   # left to a person: never done unattended
    deferred: list[str] = field(default_factory=list)      # blocked by the application: retried next run
    problems: list[str] = field(default_factory=list)      # stopped a step and alert

    def as_dict(self) -> dict:
        return asdict(self)


# -- months ----------------------------------------------------------------------------------

def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` moved by whole months, the day clamped to the month's last."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    last = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last))


def ahead_months(names: set[str], today: date) -> int:
    """How many whole months after the current one have a partition, counted without a gap."""
    count = 0
    for start in schema.month_starts(today, 48)[1:]:
        if schema.partition_name(start) not in names:
            break
        count += 1
    return count


# -- partitions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    name: str
    range_from: datetime | None
    range_to: datetime | None
    detach_pending: bool
    problem: str | None = None     # why it is never touched


def list_partitions(conn: psycopg.Connection, schema_name: str) -> list[Partition]:
    parent = f"{schema_name}.{schema.KOS_LOG}"
    found = []
    for name, bound, pending in conn.execute(_q("partitions"), {"parent": parent}).fetchall():
        match = _BOUNDS.match(bound or "")
        if not match:
            found.append(Partition(name, None, None, pending, f"bounds {bound!r} are not a monthly range"))
            continue
        start, end = conn.execute(query("maintenance.sql", "partition_bounds_as_timestamps"), match.groups()).fetchone()
        named = PARTITION_NAME.match(name)
        if not named:
            found.append(Partition(name, start, end, pending, "its name does not parse as <table>_yYYYYmMM"))
            continue
        found.append(Partition(name, start, end, pending))
    return found


def _record(conn, parent: str, p: Partition, state: str, generation: int, **values) -> None:
    conn.execute(_q("set_partition_state"), {
        "partition": p.name, "parent": parent, "state": state, "range_from": p.range_from, "range_to": p.range_to,
        "rows": values.get("rows"), "checksum": values.get("checksum"), "sha256": values.get("sha256"),
        "archive": values.get("archive"), "generation": generation,
        "qualified": f"{parent.split('.', 1)[0]}.{p.name}"})   # its size, while it still exists


def archive_name(partition: str, generation: int, sha256: str) -> str:
    """An archive's name: the partition, its generation and its content hash. Write-once: a
    second archive of the same partition (re-created, or changed after its proof) is named
    apart, so no archive is ever written over another."""
    return f"{partition}.g{generation}.{sha256[:16]}"


def content_checksum(conn: psycopg.Connection, schema_name: str, table: str) -> tuple[int, int]:
    """Rows and an order-independent checksum of a table's content (sum of 64-bit row hashes)."""
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")   # timestamps render the same on every server
        rows, total = conn.execute(psql.SQL(_CHECKSUM).format(
            psql.Identifier(schema_name, table))).fetchone()
    return int(rows), int(total)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PgTools:
    """pg_dump / pg_restore against the target, the password in the environment, never in argv."""

    def __init__(self, ctx: RunbookContext):
        self.ctx = ctx
        self.bindir = proc.find_bindir(None)
        self.endpoint = ctx.target.endpoint("primary")

    def _run(self, args: list[str], what: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.ctx.admin_password()}
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=6 * 3600, check=False)
        if result.returncode != 0:
            raise TargetError(f"{what} failed: {result.stderr.strip()[-800:]}")

    def conninfo(self, dbname: str | None = None) -> str:
        return self.endpoint.conninfo(self.ctx.env.server.admin.user, dbname=dbname, application_name="pcdb-maintenance",
                                      tools=True)

    def dump(self, schema_name: str, table: str, path: Path) -> None:
        self._run([str(self.bindir / "pg_dump"), "-Fc", "-t", f'"{schema_name}"."{table}"', "-f", str(path),
                   "-d", self.conninfo()], f"pg_dump of {table}")

    def restore_table(self, path: Path, listing: Path) -> None:
        """Restore only the table and its rows (no attach, indexes or constraints) into the proof database."""
        toc = subprocess.run([str(self.bindir / "pg_restore"), "-l", str(path)], capture_output=True, text=True,
                             timeout=600, check=False)
        if toc.returncode != 0:
            raise TargetError(f"the archive {path.name} does not read as a pg_dump archive: {toc.stderr.strip()[-300:]}")
        keep = [line for line in toc.stdout.splitlines() if line and not line.startswith(";")
                and (" TABLE DATA " in line or (" TABLE " in line and " TABLE ATTACH " not in line))]
        listing.write_text("\n".join(keep) + "\n")
        self._run([str(self.bindir / "pg_restore"), "-L", str(listing), "--no-owner", "--no-privileges",
                   "-d", self.conninfo(PROOF_DATABASE), str(path)], f"pg_restore of {path.name}")


def _workdir(env_name: str) -> Path:
    """Where dumps are written before they go to the store; emptied at every run (a killed run's
    half-written dump is never mistaken for an archive)."""
    folder = Path(tempfile.gettempdir()) / f"pcdb-maintenance-{env_name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    return folder


def _drop_proof_database(ctx: RunbookContext) -> None:
    with ctx.connect(dbname="postgres") as conn:
        conn.execute(psql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psql.Identifier(PROOF_DATABASE)))


def partitions(ctx: RunbookContext, out: Outcome, now: datetime) -> None:
    """Keep partitions ahead; archive, prove, detach and drop the expired ones, oldest first."""
    env = ctx.env
    schema_name, zone = env.service.schema_name, ZoneInfo(env.service.timezone)
    today = now.astimezone(zone).date()
    parent = f"{schema_name}.{schema.KOS_LOG}"
    lock_timeout = f"{int(env.operations.maintenance.lock_timeout.total_seconds() * 1000)}ms"
    with ctx.connect() as conn:
        if out.dry_run:
            names = {p.name for p in list_partitions(conn, schema_name)}
            ahead = schema.month_starts(today, env.service.log_partitions_ahead)
            out.partitions["created"] = [schema.partition_name(s) for s in ahead
                                         if schema.partition_name(s) not in names]
        else:
            change = schema.ensure_log_partitions(conn, schema_name, env.service.timezone,
                                                  env.service.log_partitions_ahead, now=now, lock_timeout=lock_timeout)
            out.partitions["created"] = list(change.diff.get("partitions", ((), []))[1])
            out.deferred += list(change.notes[1:]) if change.action == "deferred" else []
            conn.execute(_q("partition_archive_table"))
            conn.execute(_q("partition_archive_key"))
        listed = list_partitions(conn, schema_name)
        out.partitions["ahead_months"] = ahead_months({p.name for p in listed}, today)
        exists = conn.execute(query("maintenance.sql", "archive_table_exists")).fetchone()[0]
        records = {r[0]: r for r in conn.execute(_q("partition_records"), {"parent": parent})} if exists else {}
    cutoff = add_months(now.astimezone(zone), -env.operations.log_partition_retention_months)
    for p in listed:
        if p.problem:
            out.problems.append(f"partition {p.name}: {p.problem}; it is never archived or dropped by pcdb, "
                                "look at it by hand")
    # A partition is expired when every row it can hold is older than the retention.
    expired = sorted((p for p in listed if not p.problem and p.range_to <= cutoff), key=lambda p: p.range_from)
    # Partitions pcdb detached earlier (no longer listed as attached) and not dropped yet.
    attached = {p.name for p in listed}
    leftovers = [r for name, r in records.items() if name not in attached and r[1] != "dropped"]
    if out.dry_run:
        for p in expired:
            out.partitions["archived"].append({"name": p.name, "rows": None, "sha256": None, "archive": None,
                                               "verified": False})
            out.partitions["detached"].append(p.name)
            out.partitions["dropped"].append(p.name)
        for r in leftovers:
            out.partitions["dropped"].append(r[0])
        return
    workdir = _workdir(env.name)
    tools = PgTools(ctx)
    try:
        for r in leftovers:   # detached by an earlier run that was stopped before the drop
            with ctx.connect() as conn:
                bounds = conn.execute(query("maintenance.sql", "archived_range"),
                                      (r[0],)).fetchone()
            _lifecycle(ctx, tools, out, Partition(r[0], bounds[0], bounds[1], False), records.get(r[0]), workdir,
                       lock_timeout, attached=False)
        for p in expired:
            _lifecycle(ctx, tools, out, p, records.get(p.name), workdir, lock_timeout, attached=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _drop_proof_database(ctx)


def _lifecycle(ctx: RunbookContext, tools: PgTools, out: Outcome, p: Partition, record, workdir: Path,
               lock_timeout: str, attached: bool) -> None:
    env = ctx.env
    schema_name = env.service.schema_name
    parent = f"{schema_name}.{schema.KOS_LOG}"
    state = record[1] if record else None
    rows, checksum, sha, archive = (record[2], record[3], record[4], record[5]) if record else (None,) * 4
    generation = record[6] if record else 1
    with ctx.connect() as conn:
        present = conn.execute(_q("table_exists"), {"schema": schema_name, "name": p.name}).fetchone()[0]
        if not present:
            if state in ("detached", "detaching", "verified"):   # dropped, and killed before it was recorded
                _record(conn, parent, p, "dropped", generation)
                out.partitions["dropped"].append(p.name)
            elif state is not None:
                out.problems.append(f"partition {p.name} is gone but was only {state}: its archive was never proved")
            return
        if state == "dropped":
            # The month was created again after its drop: a new life, archived beside the first one.
            state, rows, checksum, sha, archive, generation = None, None, None, None, None, generation + 1
        if state in (None, "archiving"):
            _record(conn, parent, p, "archiving", generation)                   # intent first
            crash.point("maintenance:archiving")
            dump = workdir / f"{p.name}.dump"
            tools.dump(schema_name, p.name, dump)
            sha = _sha256(dump)
            archive = ctx.target.archive_partition(dump, archive_name(p.name, generation, sha), sha)
            _record(conn, parent, p, "archived", generation, sha256=sha, archive=archive)
            state = "archived"
            crash.point("maintenance:archived")
        if state == "archived":
            proved = _prove(ctx, tools, conn, p, sha, archive, workdir, out, generation)
            if proved is None:
                return                                    # the problem is recorded; nothing is dropped
            rows, checksum = proved
            _record(conn, parent, p, "verified", generation, rows=rows, checksum=checksum)
            state = "verified"
        out.partitions["archived"].append({"name": p.name, "rows": rows, "sha256": sha, "archive": archive,
                                           "verified": True, "generation": generation})
        if state in ("verified", "detaching"):
            _record(conn, parent, p, "detaching", generation)
            crash.point("maintenance:detaching")
            if not _detach(conn, schema_name, p, attached, lock_timeout, out):
                return
            _record(conn, parent, p, "detached", generation)
            state = "detached"
        out.partitions["detached"].append(p.name)
        crash.point("maintenance:detached")
        live = content_checksum(conn, schema_name, p.name)
        if live != (int(rows), int(checksum)):    # the proof's own figures, compared as the proof compared them
            # Written to after its archive was proved: the proved archive stays as it is; the
            # next run archives the new content as a new generation. Nothing is dropped now.
            _record(conn, parent, p, "archiving", generation + 1)
            out.problems.append(f"partition {p.name} changed after its archive was proved ({rows} rows proved, "
                                f"{live[0]} now): not dropped; the next run archives it again, beside the proved archive")
            return
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                conn.execute(psql.SQL("DROP TABLE {}").format(psql.Identifier(schema_name, p.name)))
        except psycopg.errors.LockNotAvailable:
            out.deferred.append(f"drop of {p.name}: a transaction still uses it; dropped next run")
            return
        crash.point("maintenance:dropped")
        _record(conn, parent, p, "dropped", generation)
        out.partitions["dropped"].append(p.name)


def _prove(ctx, tools: PgTools, conn, p: Partition, sha: str, archive: str, workdir: Path,
           out: Outcome, generation: int) -> tuple[int, int] | None:
    """Fetch the stored archive back, check its SHA-256, restore it into a scratch database and
    compare rows and content checksum with the live partition; None (and a problem) when not."""
    fetched = ctx.target.fetch_partition_archive(archive, workdir / f"{p.name}.fetched.dump")
    got = _sha256(fetched)
    if got != sha:
        out.problems.append(f"archive of {p.name} at {archive} does not match its recorded SHA-256 ({got[:12]}… != "
                            f"{sha[:12]}…): the partition is NOT dropped. Look for tampering; the next run archives "
                            "it again under a name of its own (the bad archive is kept as evidence)")
        with ctx.connect() as c:
            _record(c, f"{ctx.env.service.schema_name}.{schema.KOS_LOG}", p, "archiving", generation + 1)
        return None
    _drop_proof_database(ctx)
    with ctx.connect(dbname="postgres") as admin:
        admin.execute(psql.SQL("CREATE DATABASE {}").format(psql.Identifier(PROOF_DATABASE)))
    with ctx.connect(dbname=PROOF_DATABASE) as scratch:
        scratch.execute(psql.SQL("CREATE SCHEMA {}").format(psql.Identifier(ctx.env.service.schema_name)))
    tools.restore_table(fetched, workdir / f"{p.name}.list")
    with ctx.connect(dbname=PROOF_DATABASE) as scratch:
        restored = content_checksum(scratch, ctx.env.service.schema_name, p.name)
    live = content_checksum(conn, ctx.env.service.schema_name, p.name)
    _drop_proof_database(ctx)
    if restored != live:
        out.problems.append(f"the archive of {p.name} restores {restored[0]} rows (checksum {restored[1]}), the live "
                         f"partition has {live[0]} (checksum {live[1]}): NOT dropped; the next run archives it again")
        with ctx.connect() as c:
            _record(c, f"{ctx.env.service.schema_name}.{schema.KOS_LOG}", p, "archiving", generation + 1)
        return None
    return restored


def _detach(conn, schema_name: str, p: Partition, attached: bool, lock_timeout: str, out: Outcome) -> bool:
    """DETACH CONCURRENTLY (FINALIZE when an earlier one was interrupted); False when the
    application held it up (retried next run: FINALIZE finishes it)."""
    if not attached:
        return True
    parent = psql.Identifier(schema_name, schema.KOS_LOG)
    table = psql.Identifier(schema_name, p.name)
    pending = conn.execute(query("maintenance.sql", "detach_pending"),
                           (f"{schema_name}.{p.name}",)).fetchone()
    if pending is None:
        return True                                   # already detached (killed before it was recorded)
    word = "FINALIZE" if pending[0] else "CONCURRENTLY"
    conn.execute(f"SET lock_timeout = '{lock_timeout}'")   # DETACH CONCURRENTLY refuses a transaction block
    try:
        conn.execute(psql.SQL("ALTER TABLE {} DETACH PARTITION {} " + word).format(parent, table))
    except psycopg.errors.LockNotAvailable:
        out.deferred.append(f"detach of {p.name}: an application transaction held it up; it stays pending "
                            "and the next run finishes it (DETACH … FINALIZE)")
        return False
    finally:
        conn.execute("RESET lock_timeout")
    return True


# -- statistics ------------------------------------------------------------------------------

def _schemas(ctx: RunbookContext) -> list[str]:
    return [ctx.env.service.schema_name]


def statistics(ctx: RunbookContext, out: Outcome) -> None:
    """ANALYZE what changed a lot since its last analyze; plain VACUUM where dead rows pile up.
    Never VACUUM FULL: it locks the table for the whole rewrite (only ever recommended)."""
    m = ctx.env.operations.maintenance
    with ctx.connect() as conn:
        rows = conn.execute(_q("stale_statistics"), {
            "schemas": _schemas(ctx), "min_rows": m.min_rows, "analyze_fraction": m.analyze_modified_fraction,
            "vacuum_fraction": m.vacuum_dead_fraction}).fetchall()
        timeout = f"{int(m.lock_timeout.total_seconds() * 1000)}ms"
        for schema_name, table, live, dead, _modified in rows:
            name = f"{schema_name}.{table}"
            vacuum = dead >= m.min_rows and dead >= m.vacuum_dead_fraction * max(live + dead, 1)
            word = "VACUUM (ANALYZE)" if vacuum else "ANALYZE"
            if not out.dry_run:
                conn.execute(f"SET lock_timeout = '{timeout}'")   # VACUUM refuses a transaction block
                try:
                    conn.execute(psql.SQL(word + " {}").format(psql.Identifier(schema_name, table)))
                except psycopg.errors.LockNotAvailable:
                    out.deferred.append(f"{word} {name}: held up by the application; next run")
                    continue
                finally:
                    conn.execute("RESET lock_timeout")
            out.statistics["analyzed"].append(name)
            if vacuum:
                out.statistics["vacuumed"].append(name)
                if live and dead > live:
                    out.recommended.append(f"{name} has more dead rows ({dead}) than live ({live}) even after "
                                           "VACUUM: consider pg_repack or VACUUM FULL in a maintenance window "
                                           "(never run unattended: it locks the table)")


# -- indexes ---------------------------------------------------------------------------------

def plan_indexes(ctx: RunbookContext) -> set[str]:
    """The plan's own §3.2.1 indexes (the spec's ``indexes``, R-IDX-1)."""
    return {name for names in ctx.env.indexes.values() for name in names}


def indexes(ctx: RunbookContext, out: Outcome, production: bool, approved: bool) -> None:
    m = ctx.env.operations.maintenance
    schemas = _schemas(ctx)
    keep = plan_indexes(ctx) if m.keep_plan_indexes else set()
    with ctx.connect() as conn:
        age = conn.execute(_q("stats_age_days")).fetchone()[0]
        primary = {(r[0], r[1]): r for r in conn.execute(_q("index_usage"), {"schemas": schemas})}
        for schema_name, name, table, definition in conn.execute(_q("invalid_indexes"), {"schemas": schemas}):
            out.indexes["invalid"].append(f"{schema_name}.{name}")
            out.recommended.append(f"invalid index {schema_name}.{name} on {table} (a failed CREATE/REINDEX "
                                   f"CONCURRENTLY): DROP INDEX CONCURRENTLY {schema_name}.{name}; rebuild with "
                                   f"{definition.replace('INDEX', 'INDEX CONCURRENTLY', 1)}")
        bloat = conn.execute(_q("btree_bloat"), {"schemas": schemas}).fetchall()
    scans = {key: row[3] for key, row in primary.items()}
    replica_read = _replica_usage(ctx, schemas)
    if replica_read is None:
        out.recommended.append("the read replica's index statistics could not be read: unused indexes are "
                               "judged on the primary alone")
    else:
        for key, count in replica_read.items():
            scans[key] = scans.get(key, 0) + count
    if age is None or age < m.unused_index_min_stats_days:
        out.recommended.append(f"index statistics count {0 if age is None else age:.0f} day(s), fewer than "
                               f"{m.unused_index_min_stats_days}: no index is called unused yet")
    else:
        for key, (schema_name, name, table, _, size, definition, required, parent) in sorted(primary.items()):
            if scans.get(key, 0) or required or name in keep or (parent and parent in keep):
                continue
            out.indexes["unused"].append({"name": f"{schema_name}.{name}", "table": f"{schema_name}.{table}",
                                          "bytes": size, "restore_sql": definition + ";"})
        if out.indexes["unused"]:
            out.recommended.append(f"{len(out.indexes['unused'])} unused index(es): drop each by hand after a "
                                   "look (DROP INDEX CONCURRENTLY); the report gives the statement that restores it")
    free = _free_bytes(ctx)
    for schema_name, name, table, size, pages, expected in bloat:
        percent = max(0.0, 100.0 * (1 - float(expected) / pages)) if pages else 0.0
        if percent < m.reindex_bloat_percent:
            continue
        entry = {"name": f"{schema_name}.{name}", "table": f"{schema_name}.{table}", "bytes": size,
                 "bloat_percent": round(percent, 1)}
        out.indexes["bloated"].append(entry)
        if size < m.reindex_min_size:
            continue
        if free is not None and free < 2 * size:
            out.recommended.append(f"REINDEX CONCURRENTLY {entry['name']} needs about {size} bytes free; "
                                   f"{free} are: grow the storage first")
            continue
        if production and not approved:
            out.recommended.append(f"REINDEX CONCURRENTLY {entry['name']} ({entry['bloat_percent']} % bloat): "
                                   "needs the maintenance approval on production")
            continue
        if not out.dry_run:
            with ctx.connect() as conn:
                conn.execute(f"SET lock_timeout = '{int(m.lock_timeout.total_seconds() * 1000)}ms'")
                try:
                    conn.execute(psql.SQL("REINDEX INDEX CONCURRENTLY {}").format(psql.Identifier(schema_name, name)))
                except psycopg.errors.LockNotAvailable:
                    out.deferred.append(f"REINDEX of {entry['name']}: held up by the application; next run")
                    continue
        out.indexes["reindexed"].append(entry["name"])


def _replica_usage(ctx: RunbookContext, schemas: list[str]) -> dict | None:
    try:
        endpoint = ctx.target.endpoint("replica")
        with psycopg.connect(endpoint.conninfo(ctx.env.server.admin.user, ctx.admin_password()),
                             autocommit=True) as conn:
            return {(r[0], r[1]): r[3] for r in conn.execute(_q("index_usage"), {"schemas": schemas})}
    except (psycopg.Error, PcdbError) as exc:
        logger.warning("replica index statistics: %s", exc)
        return None


def _free_bytes(ctx: RunbookContext) -> int | None:
    try:
        sample = ctx.target.metrics()
    except PcdbError:
        return None
    return sample.storage_quota_bytes - sample.storage_used_bytes


# -- slow queries ----------------------------------------------------------------------------

def slow_queries(ctx: RunbookContext, out: Outcome, now: datetime) -> None:
    """Top 10 statements by total and by mean time over the month: deltas against the snapshot
    stored last month (never a reset), with the eviction counter watched."""
    m = ctx.env.operations.maintenance
    with ctx.connect() as conn:
        if not conn.execute(query("catalog.sql", "pg_stat_statements_installed")).fetchone()[0]:
            out.recommended.append("pg_stat_statements is not installed in the service database: no slow-query review")
            return
        if not out.dry_run:
            conn.execute(_q("statements_snapshot_table"))
        has_table = conn.execute(query("maintenance.sql", "statements_snapshot_exists")).fetchone()[0]
        before = {r[0]: r for r in conn.execute(_q("last_snapshot"))} if has_table else {}
        current = conn.execute(_q("statements_now")).fetchall()
        dealloc = current[0][4] if current else 0
        if before and dealloc > next(iter(before.values()))[3]:
            out.recommended.append(f"pg_stat_statements evicted {dealloc - next(iter(before.values()))[3]} "
                                   "statements this month: raise pg_stat_statements.max, the review misses some")
        rows = []
        for queryid, text, calls, total, _ in current:
            old = before.get(queryid)
            d_calls = calls - (old[1] if old and old[1] <= calls else 0)
            d_total = total - (old[2] if old and old[1] <= calls else 0)
            if d_calls <= 0:
                continue
            mean = d_total / d_calls
            entry = {"queryid": queryid, "calls": d_calls, "total_ms": round(d_total, 3), "mean_ms": round(mean, 3),
                     "delta_total_ms": round(d_total, 3), "query": text}
            if old and old[1]:
                was = old[2] / old[1]
                if was > 0 and mean > was * (1 + m.slow_query_regression_percent / 100):
                    entry["regression_percent"] = round(100 * (mean / was - 1), 1)
            rows.append(entry)
        top = {r["queryid"]: r for r in sorted(rows, key=lambda r: -r["total_ms"])[:10]}
        top |= {r["queryid"]: r for r in sorted(rows, key=lambda r: -r["mean_ms"])[:10]}
        out.slow_queries = sorted(top.values(), key=lambda r: -r["total_ms"])
        for r in out.slow_queries:
            if "regression_percent" in r:
                out.recommended.append(f"statement {r['queryid']} is {r['regression_percent']} % slower per call "
                                       f"than last month: {r['query'][:80]}")
        if not out.dry_run:
            with conn.transaction():
                for queryid, text, calls, total, dealloc in current:
                    conn.execute(query("maintenance.sql", "insert_statement_snapshot"),
                                 (now, queryid, text, calls, total, dealloc))


# -- accounts --------------------------------------------------------------------------------

def accounts(ctx: RunbookContext, out: Outcome, since: datetime) -> None:
    env = ctx.env
    expiry_days = env.security.password_policy.expiry.total_seconds() / 86400
    named = {r.name for r in env.security.roles} | {env.server.admin.user}
    named |= ctx.target.own_roles()
    with ctx.connect() as conn:
        if conn.execute(query("maintenance.sql", "password_history_exists")).fetchone()[0]:
            ages = {role: round(float(days), 1) for role, days in conn.execute(_q("password_ages"))}
        else:
            ages = {}
        out.accounts["password_age_days"] = {r.name: ages.get(r.name) for r in env.security.roles}
        out.accounts["password_expired"] = sorted(r for r, d in out.accounts["password_age_days"].items()
                                                  if d is not None and d > expiry_days)
        for role, superuser, _ in conn.execute(_q("login_roles")):
            if superuser:
                out.accounts["superusers"].append(role)
            if role not in named:
                out.accounts["unexpected_roles"].append(role)
        drift = security.grant_differences(conn, env.security.roles, env.service.database,
                                           env.service.schema_name)
        out.accounts["grant_drift"] = [f"{k}: {have} -> {want} (spec)" for k, (have, want) in sorted(drift.items())]
    out.accounts["failed_logins"] = ctx.target.failed_logins(since)
    for role in out.accounts["password_expired"]:
        out.recommended.append(f"the password of {role} is older than {expiry_days:.0f} days: rotate it (§4.3.2)")
    for role in out.accounts["unexpected_roles"]:
        out.recommended.append(f"role {role} is not in the spec: drop it or name it in security.roles")
    if out.accounts["grant_drift"]:
        out.recommended.append("grants differ from §4.1.2: `pcdb install --phases 5` puts them back")


# -- hygiene ---------------------------------------------------------------------------------

def hygiene(ctx: RunbookContext, out: Outcome, now: datetime) -> None:
    expires = ctx.target.tls_certificate_expiry()
    out.hygiene["tls_certificate_expires"] = expires.isoformat() if expires else None
    if expires is not None:
        days = (expires - now).total_seconds() / 86400
        out.hygiene["tls_certificate_days_left"] = round(days, 1)
        if days < 30:
            out.recommended.append(f"the server's TLS certificate expires in {days:.0f} days: renew it")
    drift = ctx.target.parameter_differences()
    out.hygiene["parameter_drift"] = {node: {k: {"current": a, "spec": b} for k, (a, b) in d.items()}
                                      for node, d in drift.items() if d}
    if out.hygiene["parameter_drift"]:
        out.recommended.append("server parameters differ from the spec: `pcdb install --phases 3` reconciles them")
    with ctx.connect() as conn:
        out.hygiene["unvalidated_constraints"] = [f"{s}.{t}.{c}" for s, t, c in
                                                  conn.execute(_q("unvalidated_constraints"),
                                                               {"schemas": _schemas(ctx)})]
        out.hygiene["invalid_indexes"] = [f"{s}.{n}" for s, n, _, _ in
                                          conn.execute(_q("invalid_indexes"), {"schemas": _schemas(ctx)})]


# -- the run ---------------------------------------------------------------------------------

def refuse_inside_maintenance_window(ctx: RunbookContext, now: datetime) -> None:
    """Azure's own maintenance (patching, restarts) and ours must not overlap."""
    for event in ctx.target.planned_maintenance():
        start, end = event.start, event.end
        if start is not None and start <= now and (end is None or now < end):
            raise PcdbError(f"Azure's planned maintenance is under way on the server ({event.title}, since "
                            f"{start:%Y-%m-%d %H:%M} UTC{f' until {end:%H:%M}' if end else ''}): maintenance did not "
                            "start; run it after")
    window = ctx.target.maintenance_window()
    if not window:
        return
    start = window.start
    if start <= now < start + timedelta(minutes=window.minutes):
        raise PcdbError(f"the server is inside its Azure maintenance window ({start:%a %H:%M} UTC, "
                        f"{window.minutes} min{', ' + window.note if window.note else ''}): "
                        "maintenance did not start; run it after the window")


MIN_AHEAD = 2   # the health rule: fewer whole months ready than this is an alert


def partition_guard(ctx: RunbookContext, now: datetime | None = None) -> CheckResult | None:
    """The cheap daily step: keep the KOS log's partitions ``log_partitions_ahead`` months
    ahead, and say how many are ready (an insert never fails for lack of a partition)."""
    env = ctx.env
    started = time.monotonic()
    now = now or clock.now()
    with ctx.connect() as conn:
        if conn.execute(query("catalog.sql", "relation_missing"), (f"{env.service.schema_name}.{schema.KOS_LOG}",)).fetchone()[0]:
            return None   # install Phase 4 has not run: nothing to keep ahead yet
        change = schema.ensure_log_partitions(conn, env.service.schema_name, env.service.timezone,
                                              env.service.log_partitions_ahead, now=now)
        names = {p.name for p in list_partitions(conn, env.service.schema_name)}
    ahead = ahead_months(names, now.astimezone(ZoneInfo(env.service.timezone)).date())
    created = list(change.diff.get("partitions", ((), []))[1])
    return CheckResult("KOS-log partitions ahead", "R-OPS-3", ahead >= MIN_AHEAD,
                       f"{ahead} month(s) ready after this one (at least {MIN_AHEAD}); "
                       f"created {', '.join(created) or 'none'}"
                       + (f"; {'; '.join(change.notes[1:])}" if len(change.notes) > 1 else ""),
                       details={"ahead_months": ahead, "created": created}, seconds=time.monotonic() - started)


def verify(ctx: RunbookContext, out: Outcome, now: datetime) -> list[str]:
    """After the run, read back what it claims: the KOS log has at least MIN_AHEAD months ready,
    every partition it dropped is gone and recorded dropped with a proved archive, every index
    it rebuilt is valid. Returns what does not hold (each also a problem of the run)."""
    env = ctx.env
    failed = []
    with ctx.connect() as conn:
        if out.partitions["created"] or out.partitions["dropped"] or "partitions" in out.steps:
            names = {p.name for p in list_partitions(conn, env.service.schema_name)}
            ahead = ahead_months(names, now.astimezone(ZoneInfo(env.service.timezone)).date())
            if ahead < MIN_AHEAD:
                failed.append(f"only {ahead} month(s) of KOS-log partitions are ready ahead (at least {MIN_AHEAD})")
        for name in out.partitions["dropped"]:
            present = conn.execute(_q("table_exists"), {"schema": env.service.schema_name, "name": name}).fetchone()[0]
            record = conn.execute(query("maintenance.sql", "archive_record"),
                                  (name,)).fetchone()
            if present or not record or record[0] != "dropped" or not record[1]:
                failed.append(f"partition {name} is reported dropped but the catalog or its record disagrees "
                              f"(present: {present}, record: {record and record[0]})")
        for name in out.indexes["reindexed"]:
            schema_name, index = name.split(".", 1)
            valid = conn.execute(query("maintenance.sql", "index_valid"), (schema_name, index)).fetchone()
            if not valid or not valid[0]:
                failed.append(f"index {name} was rebuilt but is not valid")
    out.verified = not failed
    out.problems += [f"verify: {f}" for f in failed]
    return failed


def check_steps(only: list[str] | None) -> list[str]:
    selected = only or list(STEPS)
    unknown = [s for s in selected if s not in STEPS]
    if unknown:
        raise PcdbError(f"--only {','.join(unknown)}: unknown step(s); the steps are {', '.join(STEPS)}")
    return [s for s in STEPS if s in selected]


def run(ctx: RunbookContext, only: list[str] | None = None, dry_run: bool = False, now: datetime | None = None,
        approved: bool = False, step: Steps | None = None) -> Outcome:
    """Run the selected steps (all by default) in their order, each through ``step`` (pcdb.steps:
    the flow makes each a Prefect task run, retried for transient failures: every maintenance
    step reads what exists before it changes anything); ``now`` moves the clock for tests."""
    step = step or Steps()
    selected = check_steps(only)
    now = now or clock.now()
    out = Outcome(dry_run=dry_run, steps=selected)
    actions = {
        "partitions": lambda: partitions(ctx, out, now),
        "statistics": lambda: statistics(ctx, out),
        "indexes": lambda: indexes(ctx, out, ctx.env.production, approved),
        "slow_queries": lambda: slow_queries(ctx, out, now),
        "accounts": lambda: accounts(ctx, out, add_months(now, -1)),
        "hygiene": lambda: hygiene(ctx, out, now),
    }
    for name in selected:
        step(name, actions[name], retry=True)
    if not dry_run:
        step("verify", lambda: verify(ctx, out, now), retry=True)
    return out
