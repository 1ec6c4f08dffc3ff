"""Nightly backup verification (R-BAK-1/2, §8.1.1): a backup counts as verified only when it
has been restored and checked.

The daily checks read the backup facts; the restore test restores the latest restorable point
into a throw-away server and proves it: amcheck over every table and index, row counts and
content checksums per table equal to the source at a marked moment, the schema objects and
roles present. The throw-away server is deleted in ``finally``, whatever happened.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql as psql

from pcdb import clock, ledger
from pcdb.checks import CheckResult
from pcdb.config import Environment
from pcdb.schema import LEDGER_SCHEMA
from pcdb.sql import query
from pcdb.steps import STEP_TIMEOUT, Steps
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
        CheckResult("geo-redundant backup", "R-BAK-1",
                    status.geo_redundant or not env.backup.geo_redundant or bool(status.geo_waived),
                    "geo copy present and identical" if status.geo_redundant else
                    f"no geo copy, accepted until the failback: {status.geo_waived}" if status.geo_waived else
                    "geo copy missing or different"),
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
    jobs: int = 1                     # connections the fingerprints were read with, on each side
    hashed_as_text: list[str] = field(default_factory=list)   # heaps whose rows were hashed as md5 of text
    mode: str = "full"                # full, or sample (a seeded share of the rows; amcheck of every page)
    mode_reason: str = ""
    sample_seed: int | None = None
    rows_compared_percent: float | None = None   # of the heaps' blocks, the share whose rows were compared

    @property
    def bytes_per_second(self) -> float | None:
        return round(self.bytes / self.seconds) if self.bytes and self.seconds else None

    def as_dict(self) -> dict:
        return {"passed": self.passed, "seconds": self.seconds, "bytes": self.bytes,
                "bytes_per_second": self.bytes_per_second, "tables_compared": self.tables_compared,
                "mismatches": self.mismatches, "amcheck_ok": self.amcheck_ok,
                "server_deleted": self.server_deleted, "detail": self.detail, "steps": self.steps,
                "jobs": self.jobs, "hashed_as_text": self.hashed_as_text, "mode": self.mode,
                "mode_reason": self.mode_reason, "sample_seed": self.sample_seed,
                "rows_compared_percent": self.rows_compared_percent}


CHUNK_BLOCKS = 16384        # one piece of fingerprint work: 128 MiB of 8 KiB pages
SAMPLE_BLOCKS = 1024        # a sampled restore test picks among 8 MiB block ranges
BEYOND_LAST_BLOCK = 4294967295   # the last piece of a heap runs to here: rows added after the size was read


Piece = tuple[str, str, str, str]     # (heap, root, from TID, to TID)


@dataclass(frozen=True)
class Sample:
    """A seeded share of every heap's block ranges (a TID range is a key range of the heap): the
    same seed picks the same ranges, so a sampled source and copy compare the same rows."""
    seed: int
    percent: float

    def pick(self, heap: str, ranges: list[Piece]) -> list[Piece]:
        """At least one range of every heap, always its last (it runs to the end: rows added later
        land there), and ``percent`` of the others, chosen by the seed and the heap's name."""
        if len(ranges) <= 1:
            return ranges
        rest = ranges[:-1]
        chosen = random.Random(f"{self.seed}:{heap}").sample(rest, max(0, round(len(rest) * self.percent / 100)))
        return sorted(chosen, key=rest.index) + ranges[-1:]


@dataclass(frozen=True)
class Fingerprints:
    """table -> (row count, order-independent checksum), and how they were made."""
    tables: dict[str, tuple[int, int]]
    as_text: frozenset[str] = frozenset()  # heaps hashed as md5 of text: a column type without extended hash
    jobs: int = 1
    pieces: tuple[Piece, ...] = ()         # the block ranges read: a sampled copy reads the source's
    blocks: int = 0                         # the heaps' blocks, and of them the ones read
    blocks_read: int = 0


def _pieces(units: list[tuple[str, str, int]], sample: Sample | None = None) -> list[Piece]:
    """(heap, root, from TID, to TID): every heap cut into block ranges, the largest first; with a
    sample, the ranges are smaller and a seeded share of them is kept."""
    out = []
    size = SAMPLE_BLOCKS if sample else CHUNK_BLOCKS
    for heap, root, blocks in units:
        starts = list(range(0, max(blocks, 1), size))
        ranges = [(heap, root, f"({lo},0)", f"({starts[i + 1] if i + 1 < len(starts) else BEYOND_LAST_BLOCK},0)")
                  for i, lo in enumerate(starts)]
        out += sample.pick(heap, ranges) if sample else ranges
    return out


def _blocks_of(pieces: list[Piece], units: list[tuple[str, str, int]]) -> int:
    """How many of the heaps' blocks the pieces cover (the last range counted to the heap's end)."""
    ends = {heap: blocks for heap, _, blocks in units}
    total = 0
    for heap, _, lo, hi in pieces:
        first, last = int(lo[1:].split(",")[0]), int(hi[1:].split(",")[0])
        total += max(0, min(last, ends.get(heap, 0)) - first)
    return total


def _fingerprint_piece(conn: psycopg.Connection, schema: str, piece: tuple[str, str, str, str],
                       as_text: set[str]) -> tuple[int, int]:
    heap, _, lo, hi = piece
    params = {"lo": lo, "hi": hi}

    def run(name: str) -> tuple[int, int]:
        stmt = psql.SQL(query("verify.sql", name)).format(schema=psql.Identifier(schema), table=psql.Identifier(heap))
        count, checksum = conn.execute(stmt, params).fetchone()
        return count, int(checksum)

    if heap not in as_text:
        try:
            with conn.transaction():        # a savepoint: the fallback runs in the same snapshot
                return run("fingerprint_of_blocks")
        except psycopg.errors.UndefinedFunction:   # "could not identify an extended hash function for type"
            as_text.add(heap)
    return run("fingerprint_of_blocks_as_text")


def fingerprints(conn: psycopg.Connection, schema: str, more: Connect | None = None, jobs: int = 1,
                 snapshot: str | None = None, sample: Sample | None = None,
                 pieces: tuple[Piece, ...] | None = None) -> Fingerprints:
    """Row count and checksum of every table of ``schema``: sums of 64-bit row hashes
    (hash_record_extended, or md5 of the row's text where a column type has no extended hash),
    so block ranges, partitions and connections add up. ``jobs`` connections work at once: ``conn``
    and ones opened with ``more``, which read ``snapshot`` (exported by ``conn``'s transaction)
    when given, so every piece sees the same moment. ``sample``: a seeded share of each heap's
    block ranges; ``pieces``: exactly these ranges (a copy reads what its source read)."""
    tables = {r[0]: (0, 0) for r in conn.execute(query("verify.sql", "table_fingerprints"), {"schema": schema})}
    units = [tuple(r) for r in conn.execute(query("verify.sql", "fingerprint_units"), {"schema": schema})]
    pieces = list(pieces) if pieces is not None else _pieces(units, sample)
    jobs = max(1, min(jobs, len(pieces))) if more else 1
    work: queue.Queue = queue.Queue()
    for piece in pieces:
        work.put(piece)
    as_text: set[str] = set()
    results: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def drain(c: psycopg.Connection) -> None:
        while True:
            try:
                piece = work.get_nowait()
            except queue.Empty:
                return
            count, checksum = _fingerprint_piece(c, schema, piece, as_text)
            with lock:
                results.append((piece[1], count, checksum))

    def helper() -> None:
        with more() as c:                   # type: ignore[misc]
            with c.transaction():
                if snapshot:
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    c.execute(psql.SQL(query("verify.sql", "import_snapshot")).format(snapshot=psql.Literal(snapshot)))
                drain(c)

    with ThreadPoolExecutor(max_workers=jobs - 1) if jobs > 1 else nullcontext() as pool:
        helpers = [pool.submit(helper) for _ in range(jobs - 1)] if pool else []
        drain(conn)
        for done in helpers:
            done.result()                   # a helper's error is the fingerprint's error
    for root, count, checksum in results:
        rows, total = tables.get(root, (0, 0))
        tables[root] = (rows + count, total + checksum)
    return Fingerprints(tables, frozenset(as_text), jobs, tuple(pieces), sum(b for _, _, b in units),
                        _blocks_of(pieces, units))


def _objects(conn: psycopg.Connection, schema: str) -> tuple[set, set]:
    objects = {tuple(r) for r in conn.execute(query("verify.sql", "schema_objects"), {"schema": schema})}
    roles = {r[0] for r in conn.execute(query("verify.sql", "login_roles"))}
    return objects, roles


def restore_test(target: Backups, env: Environment, connect_source: Connect,
                 connect_restored: Callable[[Endpoint], AbstractContextManager[psycopg.Connection]],
                 name: str | None = None, step: Steps | None = None, mode: Mode | None = None,
                 then: Callable[[Endpoint], Endpoint] | None = None) -> RestoreTest:
    """Restore to a marked moment on a throw-away server and prove it equals the source then,
    step by step: mark the moment, restore while the source is fingerprinted in that moment,
    amcheck, compare, delete. ``mode``:
    full (the default), or a sample of the rows (restore_mode says when, and why). ``then``
    changes the restored copy before it is checked (the upgrade rehearsal: pg_upgrade), with
    steps of its own; the copy is deleted whatever happens."""
    step = step or Steps()
    schema = env.service.schema_name
    jobs = env.backup.verification.jobs
    name = name or throwaway_name(env, "restore-test")
    mode = mode or Mode("full", "asked for")
    result = RestoreTest(mode=mode.kind, mode_reason=mode.reason,
                         sample_seed=mode.sample.seed if mode.sample else None)
    step(f"delete a leftover {name}", lambda: target.delete_server(name), retry=True)   # a killed run's

    held, letting_go = ExitStack(), threading.Lock()     # the source's session whose snapshot is the moment

    def let_go(*_) -> None:  # from the source's thread as its step ends, or here: once, one at a time
        with letting_go:
            held.close()

    def mark():
        with ExitStack() as opening:
            conn = opening.enter_context(connect_source())
            conn.execute(query("verify.sql", "create_pcdb_schema"))
            conn.execute(query("verify.sql", "create_restore_marker"))
            marker = clock.now().strftime("restore-test-%Y%m%dT%H%M%S%f")
            # The moment: this session's snapshot, exported, then at once the marker committed on a
            # second session and the time read after it. The restore stops at that time; the source
            # is fingerprinted in the snapshot while the restore runs. Exact when nothing else
            # commits in the milliseconds between the two; a row committed while the source is
            # being read is after the restore's stop, in neither.
            opening.enter_context(conn.transaction())
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            snapshot = conn.execute(query("verify.sql", "export_snapshot")).fetchone()[0]
            with connect_source() as marking:
                marking.execute(query("verify.sql", "insert_restore_marker"), (marker,))
                target_time = marking.execute("SELECT clock_timestamp()").fetchone()[0]
            held.push(opening.pop_all())
            return conn, snapshot, marker, target_time

    def fingerprint_source(conn, snapshot):
        # Safe to retry while the marked session lives (its snapshot with it): a helper's session
        # that failed is opened again and imports the same snapshot.
        return (fingerprints(conn, schema, more=connect_source, jobs=jobs, snapshot=snapshot, sample=mode.sample),
                *_objects(conn, schema))

    def restore(target_time):
        started = time.monotonic()
        endpoint = target.restore_point_in_time(target_time, name)
        result.seconds = round(time.monotonic() - started, 3)
        return endpoint

    try:
        conn, snapshot, marker, target_time = step("mark the moment on the source", mark, retry=True)
        source = step.beside("fingerprint the source at that moment", lambda: fingerprint_source(conn, snapshot),
                             retry=True)
        source.add_done_callback(let_go)                   # the snapshot is let go as soon as the source is read
        try:
            endpoint = step(f"restore the base backup and the WAL to that moment on {name}",
                            lambda: restore(target_time))
        except BaseException:
            wait([source], timeout=STEP_TIMEOUT)   # the restore's error is the test's; the source's read ends first
            raise
        # Prefect cannot interrupt a step in a thread: the wait for it is bounded here instead.
        source_fp, objects, roles = source.result(timeout=STEP_TIMEOUT)   # its error, if any, is the test's
        if then is not None:
            endpoint = then(endpoint)
        result.amcheck_ok, amcheck_detail = step("amcheck every B-tree index", lambda: target.amcheck(name), retry=True)

        def compared():
            with connect_restored(endpoint) as restored:
                found = restored.execute(query("verify.sql", "count_restore_marker"), (marker,)).fetchone()[0]
                size = restored.execute(query("verify.sql", "database_size")).fetchone()[0]
                return (found, size, fingerprints(restored, schema, more=lambda: connect_restored(endpoint), jobs=jobs,
                                                  pieces=source_fp.pieces if mode.sample else None),
                        _objects(restored, schema))

        found, result.bytes, copied, (r_objects, r_roles) = step("compare fingerprints, objects and roles", compared,
                                                                  retry=True)
        result.jobs, result.hashed_as_text = copied.jobs, sorted(source_fp.as_text | copied.as_text)
        result.rows_compared_percent = round(100.0 * source_fp.blocks_read / source_fp.blocks, 1) \
            if source_fp.blocks else 100.0
        source, copy = source_fp.tables, copied.tables
        result.tables_compared = len(source)
        result.mismatches = [f"{t}: source {source[t][0]} rows, restored {copy.get(t, (None,))[0]}"
                             + ("" if copy.get(t, (None,))[0] != source[t][0] else " (content differs)")
                             for t in source if copy.get(t) != source[t]]
        missing = sorted(objects - r_objects)
        result.mismatches += [f"missing {kind} {obj}" for kind, obj in missing]
        result.mismatches += [f"missing role {r}" for r in sorted(roles - r_roles)]
        result.passed = found == 1 and not result.mismatches and result.amcheck_ok
        result.detail = (f"restored to {target_time.isoformat()} in {result.seconds}s; marker "
                         f"{'found' if found else 'MISSING'}; {result.tables_compared} tables compared "
                         + (f"on a sample (seed {result.sample_seed}, {result.rows_compared_percent} % of their "
                            "blocks) " if mode.sample else "")
                         + f"({result.jobs} connection(s) a side"
                         + (f"; hashed as text: {', '.join(result.hashed_as_text)}" if result.hashed_as_text else "")
                         + "), "
                         f"{len(result.mismatches)} mismatch(es); amcheck: {amcheck_detail}")
    except Exception as exc:  # noqa: BLE001 - the test's verdict, not a crash of the runbook
        result.passed = False
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.detail = f"restore test failed: {type(exc).__name__}: {first}"
    finally:
        let_go()                # when the source's step never ran
        result.server_deleted = step(f"delete the throw-away server {name}", lambda: _deleted(target, name),
                                     retry=True)
    result.steps = step.as_dicts()
    return result


@dataclass(frozen=True)
class Mode:
    """Which restore test runs: the full comparison, or a sample of the rows, and why."""
    kind: str
    reason: str
    sample: Sample | None = None


def latest_budget(conn: psycopg.Connection, now: datetime) -> tuple[dict, dict] | None:
    """The latest restore test's projection (Budget.as_dict) and its ledger row, within 8 days."""
    for row in ledger.rows(conn, LEDGER_SCHEMA, now - timedelta(days=8), flow="backup-verification"):
        planned = (row.get("figures") or {}).get("restore_budget")
        if planned:
            return planned, row
    return None


def restore_mode(conn: psycopg.Connection, env: Environment, now: datetime) -> Mode:
    """Full on the weekly restore-test day, and whenever the last restore test's projection fitted
    backup.verification.window (or there is none yet); otherwise a sample of
    backup.verification.sample_percent, seeded by the business date."""
    from zoneinfo import ZoneInfo

    verification = env.backup.verification
    day = now.astimezone(ZoneInfo(env.service.timezone))
    if day.strftime("%A").lower() == verification.restore_test_weekday:
        return Mode("full", f"{verification.restore_test_weekday}, the weekly restore-test day: the full comparison")
    latest = latest_budget(conn, now)
    if latest is not None:
        planned, row = latest
        if planned.get("fits", True):
            return Mode("full", f"the last restore test ({row['recorded_at']:%Y-%m-%d}) projected "
                                f"{planned['projected_seconds']:.0f} s, within the window's "
                                f"{planned['window_seconds']:.0f} s")
        seed = int(day.strftime("%Y%m%d"))
        return Mode("sample", f"the last restore test ({row['recorded_at']:%Y-%m-%d}) projected "
                              f"{planned['projected_seconds']:.0f} s at {planned['size_bytes'] / 2**30:.1f} GiB, past the "
                              f"window's {planned['window_seconds']:.0f} s: {verification.sample_percent:g} % of each "
                              f"table's block ranges (seed {seed}); every page is still amchecked, and "
                              f"{verification.restore_test_weekday} compares everything",
                    Sample(seed, verification.sample_percent))
    return Mode("full", "no restore test projected in the last 8 days")


@dataclass(frozen=True)
class Budget:
    """The restore test's duration projected at the environment's size, against its window."""
    size_bytes: int                   # the size projected at
    size_from: str                    # where that size comes from
    seconds_per_gb: float             # this run's whole test (first step to last) per GiB restored
    projected_seconds: float
    window_seconds: float

    @property
    def fits(self) -> bool:
        return self.projected_seconds <= self.window_seconds

    def as_dict(self) -> dict:
        return {"size_bytes": self.size_bytes, "size_from": self.size_from, "seconds_per_gb": self.seconds_per_gb,
                "projected_seconds": self.projected_seconds, "window_seconds": self.window_seconds,
                "fits": self.fits}


def environment_size(conn: psycopg.Connection) -> tuple[int, str] | None:
    """The database's size as the latest capacity analysis measured it, and when (from the ledger)."""
    for row in ledger.rows(conn, LEDGER_SCHEMA, clock.now() - timedelta(days=60), flow="capacity"):
        used = (row.get("figures") or {}).get("used_bytes")
        if used:
            return int(used), f"the capacity analysis of {row['recorded_at']:%Y-%m-%d}"
    return None


def budget(test: RestoreTest, env: Environment, size: tuple[int, str] | None) -> Budget | None:
    """Project this run's restore test to ``size`` (else the restored copy's own), linearly: this
    run's seconds per GiB, from its first step's start to its last step's end (steps run beside
    each other count once), times the size. A small database's fixed costs (a server's start and
    stop) make that an overestimate there: it warns early, never late."""
    if not test.bytes or not test.steps:
        return None
    per_gb = _elapsed(test.steps) / (test.bytes / 2**30)
    size_bytes, size_from = size or (test.bytes, "the restored copy")
    return Budget(size_bytes, size_from, round(per_gb, 2), round(per_gb * size_bytes / 2**30, 1),
                  env.backup.verification.window.length.total_seconds())


def _elapsed(steps: list[dict]) -> float:
    """Seconds from the first step's start to the last one's end (StepRecord.as_dict)."""
    began = [datetime.fromisoformat(s["began"]) for s in steps]
    ended = max(b + timedelta(seconds=s["seconds"]) for b, s in zip(began, steps))
    return (ended - min(began)).total_seconds()


def _deleted(target: Backups, name: str) -> bool:
    """Delete the server and check it is gone (a second delete finds nothing)."""
    target.delete_server(name)
    return target.delete_server(name).action == "unchanged"
