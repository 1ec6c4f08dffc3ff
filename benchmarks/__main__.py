"""./dev bench: run every benchmark and write benchmarks/results/<name>.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _up(t) -> None:
    """The sandbox's install steps: HA pair, replica, database."""
    t.ensure_resource_group()
    t.ensure_server()
    t.ensure_replica()
    t.ensure_database()


def sandbox_lifecycle(rounds: int) -> dict:
    """Cold `up` (initdb + 2 base backups + TLS), warm `up` (no change), failovers, PITR restore."""
    from pcdb.probe import ProbeWriter
    from tests.conftest import destroy_all, new_target

    cold, warm, forced, planned, restore = [], [], [], [], []
    try:
        for _ in range(rounds):
            t = new_target()
            start = time.perf_counter()
            _up(t)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            _up(t)
            warm.append(time.perf_counter() - start)
            probe = ProbeWriter(t.endpoint("application").conninfo(t.admin, t.admin_password())).start()
            probe.wait_for_rows(20)
            for mode, sink in (("forced", forced), ("planned", planned)):
                result = t.failover(mode)
                probe.wait_for_rows(20)
                sink.append({"promote_s": result.promote_seconds, "whole_again_s": result.total_seconds})
            outcome = probe.stop()
            lost = len(probe.missing())
            t.take_backup()
            start = time.perf_counter()
            t.restore_point_in_time(datetime.now(timezone.utc), "bench-restore")
            restore.append(time.perf_counter() - start)
            t.delete_server("bench-restore")
            t.sandbox.destroy()
    finally:
        destroy_all()
    summary = lambda xs: {"median": statistics.median(xs), "worst": max(xs), "n": len(xs)}  # noqa: E731
    return {
        "cold_up_seconds": summary(cold),
        "warm_up_seconds": summary(warm),
        "forced_failover_promote_seconds": summary([x["promote_s"] for x in forced]),
        "forced_failover_whole_again_seconds": summary([x["whole_again_s"] for x in forced]),
        "planned_failover_whole_again_seconds": summary([x["whole_again_s"] for x in planned]),
        "pitr_restore_seconds": summary(restore),
        "acknowledged_rows_lost_last_round": lost,
        "probe_outage_seconds_last_round": outcome.outage_seconds,
    }


def _disruptive_checks_ran(results: list) -> list[str]:
    """The names of Phase 7's failover and PITR checks that ran (not relied on an earlier run)."""
    return sorted(r.name for r in results if getattr(r, "name", None) in ("HA failover test",
                                                                           "point-in-time restore test")
                  and r.passed and "relied_on_run" not in r.details)


def _install_directly(ctx, folder: Path) -> tuple[dict[str, float], dict[int, list]]:
    """The install flow's own pcdb work without Prefect, in its order: the preflight (the whole plan
    is made only for approvers, and this spec has none), phases 1-7 one by one, then the handover
    report written and archived and the run's ledger row with its anchors. Returns the seconds of
    each part and each phase's results."""
    import uuid

    from pcdb import clock, ledger
    from pcdb.checks import CheckResult
    from pcdb.install import PHASES, handover_text, preflight, run_directly
    from pcdb.private import write_private
    from pcdb.schema import LEDGER_SCHEMA

    each: dict[str, float] = {}
    results: dict[int, list] = {}
    began, start = clock.now(), time.perf_counter()
    if any(not c.ok for c in preflight(ctx)):
        raise RuntimeError("the direct install's preflight failed")
    each["before"] = round(time.perf_counter() - start, 3)
    for number in range(1, 8):          # phase by phase, to set beside the Prefect run's
        start = time.perf_counter()
        results |= run_directly(ctx, phases=[number])
        each[str(number)] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    checks = [i for items in results.values() for i in items if isinstance(i, CheckResult)]
    text = handover_text(ctx, results, None, "direct", {p.number: p.title for p in PHASES})
    path = write_private(folder / f"handover-{uuid.uuid4()}.md", text)
    sha = ledger.file_sha256(path)
    record = ledger.RunRecord(run_id=f"direct-{uuid.uuid4()}", flow="install", environment=ctx.env.name,
                              state="COMPLETED", triggered_by="benchmark: the direct side", started_at=began,
                              ended_at=clock.now(), figures={"checks": {"passed": sum(c.passed for c in checks),
                                                                        "total": len(checks)}},
                              report_path=str(path), report_sha256=sha,
                              report_archive=ctx.target.archive_report(path, sha))
    outcome = ledger.record(ctx.connect, LEDGER_SCHEMA, record, ledger.Spool(folder / "spool.jsonl"),
                            ctx.target.ledger_anchors())
    if outcome["ledger"] != "recorded":
        raise RuntimeError(f"the direct install's ledger row was not written: {outcome}")
    each["after"] = round(time.perf_counter() - start, 3)
    return each, results


def install_overhead(rounds: int) -> dict:
    """The whole install through Prefect vs the same pcdb work called directly (the preflight and
    plan, phases 1-7, the handover report and the ledger row), each on a fresh sandbox every
    round, made just before the side and destroyed right after it, so that no side runs beside
    the other's three servers. The two sides take turns going first, and each starts after
    ``os.sync()``, so neither pays for what the other left to the disk. The disk's speed drifts
    over minutes, so the ratio and the difference are also given round by round (the two sides of
    a round ran within a minute of each other). Both sides must have run Phase 7's failover and
    point-in-time restore checks themselves (a fresh server relies on no earlier run): the
    benchmark asserts it, from the direct side's check results and from the Prefect run's ledger
    row."""
    from flows.install import install
    from pcdb import clock, ledger
    from pcdb.context import RunbookContext
    from pcdb.schema import LEDGER_SCHEMA
    from tests.conftest import destroy_all, harness, new_target

    timings: dict[str, list[float]] = {"prefect_install": [], "direct_install": []}
    phases: dict[str, list[dict]] = {"prefect_install": [], "direct_install": []}
    folder = Path(tempfile.mkdtemp(prefix="pcdb-bench-install-"))

    def through_prefect(target) -> None:
        since = clock.now()
        start = time.perf_counter()
        state = _as_the_cli_runs_it(lambda: install(spec_path=str(target.env_path), return_state=True))
        timings["prefect_install"].append(time.perf_counter() - start)
        if not state.is_completed():
            raise RuntimeError(f"the install through Prefect failed: {state.message}")
        outcome = state.result()
        phases["prefect_install"].append({str(p["number"]): p["seconds"] for p in outcome["phases"]})
        ctx = RunbookContext(target.env, target)
        with ctx.connect() as conn:
            (row,) = ledger.rows(conn, LEDGER_SCHEMA, since, flow="install")
        if not row["figures"].get("verified_configuration"):
            raise RuntimeError("the install through Prefect did not run Phase 7's failover and PITR checks")

    def directly(target) -> None:
        start = time.perf_counter()
        each, results = _install_directly(RunbookContext(target.env, target), folder)
        timings["direct_install"].append(time.perf_counter() - start)
        phases["direct_install"].append(each)
        ran = _disruptive_checks_ran(results[7])
        if ran != ["HA failover test", "point-in-time restore test"]:
            raise RuntimeError(f"the direct install ran only {ran} of Phase 7's disruptive checks")

    try:
        with harness():
            for round_ in range(rounds):
                sides = [through_prefect, directly]
                for side in (sides if round_ % 2 == 0 else sides[::-1]):
                    target = new_target()
                    os.sync()
                    side(target)
                    target.sandbox.destroy()    # not left running beside the other side's install
    finally:
        destroy_all()
        shutil.rmtree(folder, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in timings.items()}
    pairs = list(zip(timings["prefect_install"], timings["direct_install"], strict=True))
    return {
        "median_seconds": med, "all_seconds": timings,
        "install_overhead_ratio": med["prefect_install"] / med["direct_install"],
        # the two sides of one round ran a minute apart, on the disk of that minute
        "round_ratios": [round(p / d, 3) for p, d in pairs],
        "round_ratio_median": statistics.median(p / d for p, d in pairs),
        "prefect_extra_seconds_median": statistics.median(p - d for p, d in pairs),
        "phase_seconds": phases,
        "both_ran_phase_7_failover_and_pitr": True,
        "note": "a fresh sandbox per side and round, made just before the side runs and destroyed right after; "
                "the sides take turns going first, each after os.sync(); "
                "both run the preflight (the plan is made for approvers only; this spec has none), phases 1-7 "
                "including Phase 7's two failovers and PITR restore (asserted), the handover report (written, "
                "archived) and the ledger row; the Prefect side's "
                "phase 8 is the report, its phase 6 also reads the notification blocks; direct 'before' = "
                "the preflight, 'after' = report and ledger row",
    }


def zone_drills(rounds: int) -> dict:
    """Zone-failover RTO over many forced drills (R-DR-1): median and worst, rows lost."""
    from pcdb import drills
    from pcdb.context import RunbookContext
    from pcdb.install import run_directly
    from tests.conftest import destroy_all, new_target

    rto, promote, lost, in_doubt = [], [], 0, 0
    try:
        target = new_target()
        ctx = RunbookContext(target.env, target)
        run_directly(ctx, phases=[1, 2, 3])
        for _ in range(max(rounds, 10)):
            result = drills.zone_drill(target, target.env, ctx.admin_password(), "forced")
            rto.append(result.rto_seconds)
            lost += result.rpo_rows_lost
            in_doubt += result.rows_in_doubt
            promote.append(next(float(a.split(" promoted in ")[1].split("s;")[0]) for _, a in result.timeline
                                if " promoted in " in a))
    finally:
        destroy_all()
    return {"drills": len(rto), "writer_outage_rto_seconds": {"median": statistics.median(rto), "worst": max(rto)},
            "promotion_seconds": {"median": statistics.median(promote), "worst": max(promote)},
            "acknowledged_rows_lost_total": lost, "rows_in_doubt_total": in_doubt}


def _as_the_cli_runs_it(call):
    """A flow run started the way pcdb starts one: pcdb's heartbeat, not Prefect's (flows/heartbeat.py)."""
    from flows.heartbeat import without_prefect_heartbeat

    with without_prefect_heartbeat():
        return call()


def drill_overhead(rounds: int) -> dict:
    """A zone drill's own overhead: the same forced drill (with its cleanup) called directly,
    through the Prefect flow (task runs, concurrency slot, report, notification), and through
    the Azure SDK against the sandbox-backed ARM (no network latency: the SDK's own cost)."""
    from flows.dr_drill import dr_drill
    from pcdb import drills
    from pcdb.config import load_environment
    from pcdb.context import RunbookContext
    from pcdb.install import run_directly
    from pcdb.targets.factory import make_target
    from tests.azure.fake_arm import FakeCredential
    from tests.azure.sandbox_arm import SandboxArm
    from tests.conftest import destroy_all, harness, new_target

    timings: dict[str, list[float]] = {"direct": [], "prefect_flow": [], "azure_sdk": []}
    try:
        with harness():
            local = new_target()
            ctx = RunbookContext(local.env, local)
            run_directly(ctx, phases=[1, 2, 3])
            servers = new_target()
            servers.ensure_resource_group()
            env = load_environment("prod")
            arm = SandboxArm(servers, env)
            secrets = {"azure-subscription": "11111111-2222-3333-4444-555555555555",
                       env.server.admin.user: servers.admin_password(), "teams-webhook": "https://example.invalid/x"}
            azure = make_target(env, lambda ref, owner: secrets[owner], credential=FakeCredential(), transport=arm,
                                polling_interval=0, endpoints=arm.endpoint)
            azure.poll_seconds = 0.05
            for step in (azure.ensure_resource_group, azure.ensure_network, azure.ensure_server,
                         azure.ensure_database, azure.ensure_replica):
                step()
            password = ctx.admin_password()
            for _ in range(rounds):
                for key, call in (
                    ("direct", lambda: (drills.cleanup(local, local.env, password),
                                        drills.zone_drill(local, local.env, password, "forced"))[1].as_dict()),
                    ("prefect_flow", lambda: _as_the_cli_runs_it(lambda: dr_drill("zone", spec_path=str(local.env_path),
                                                                                  yes=True, mode="forced"))),
                    ("azure_sdk", lambda: (drills.cleanup(azure, env, servers.admin_password()),
                                           drills.zone_drill(azure, env, servers.admin_password(), "forced"))[1].as_dict()),
                ):
                    start = time.perf_counter()
                    outcome = call()
                    timings[key].append(time.perf_counter() - start)
                    if not outcome["met"] or outcome["rpo_rows_lost"]:
                        raise RuntimeError(f"{key}: the drill did not meet its targets: {outcome}")
    finally:
        destroy_all()
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {"median_seconds": med, "all_seconds": timings,
            "prefect_overhead_ratio": med["prefect_flow"] / med["direct"],
            "azure_sdk_overhead_ratio": med["azure_sdk"] / med["direct"],
            "note": "each drill runs the writer for 50 acknowledged rows before and after a forced failover; "
                    "azure_sdk includes the ARM reads of zones and topology (in-process ARM, no latency)"}


def _levers(target, ctx, schema: str) -> dict:
    """The restore test's levers side by side on the same data (the primary's): the row hash, the
    connections the fingerprints read with, and pg_amcheck's jobs and heapallindexed."""

    from pcdb import backups

    out: dict = {"fingerprint_seconds": {}, "amcheck_seconds": {}}
    with ctx.connect() as conn:
        start = time.perf_counter()        # the old way: md5 of every row's text, a table at a time
        _md5_fingerprints(conn, schema)
        out["fingerprint_seconds"]["md5_text_one_connection"] = round(time.perf_counter() - start, 3)
        for jobs in (1, 2):
            start = time.perf_counter()
            backups.fingerprints(conn, schema, more=ctx.connect, jobs=jobs)
            out["fingerprint_seconds"][f"hash_record_extended_{jobs}_connection(s)"] = round(
                time.perf_counter() - start, 3)
        start = time.perf_counter()        # the sampled restore test's read: 10 % of the 8 MiB ranges
        sampled = backups.fingerprints(conn, schema, more=ctx.connect, jobs=2, sample=backups.Sample(20261202, 10))
        out["fingerprint_seconds"]["sample_10_percent_2_connections"] = round(time.perf_counter() - start, 3)
        out["sample_blocks_read_percent"] = round(100.0 * sampled.blocks_read / sampled.blocks, 1) \
            if sampled.blocks else None
    primary = target.sandbox.primary().name
    for label, jobs, heapallindexed in (("jobs_1_heapallindexed", 1, True), ("jobs_2_heapallindexed", 2, True),
                                        ("jobs_2_without_heapallindexed", 2, False)):
        start = time.perf_counter()
        ok, detail = target.sandbox.amcheck(primary, target.env.service.database, jobs=jobs,
                                            heapallindexed=heapallindexed)
        if not ok:
            raise RuntimeError(f"pg_amcheck ({label}) failed on the primary: {detail}")
        out["amcheck_seconds"][label] = round(time.perf_counter() - start, 3)
    return out


def _md5_fingerprints(conn, schema: str) -> dict[str, tuple]:
    """The verification before the speed-up: md5 of every row's text, summed as numeric, one
    table after another on one connection."""
    import psycopg

    out = {}
    for (table,) in conn.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                 "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
                                 "ORDER BY 1", (schema,)).fetchall():
        out[table] = conn.execute(psycopg.sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0) "
            "FROM {}.{} t").format(psycopg.sql.Identifier(schema), psycopg.sql.Identifier(table))).fetchone()
    return out


def _old_restore_test(target, ctx, schema: str) -> tuple[float, bool]:
    """The restore test as it was before the speed-up, on the same backup: the same restore, then
    the source and the copy fingerprinted one after the other (md5 of the text), and pg_amcheck
    with one job and heapallindexed. Returns (seconds, whether the two sides agreed)."""
    import psycopg

    name = "bench-old-restore-test"
    os.sync()
    start = time.perf_counter()
    with ctx.connect() as conn:
        source = _md5_fingerprints(conn, schema)
        target_time = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    endpoint = target.restore_point_in_time(target_time, name)      # it seals the WAL past that moment
    try:
        ok, detail = target.sandbox.amcheck(name, target.env.service.database, jobs=1, heapallindexed=True)
        if not ok:
            raise RuntimeError(f"pg_amcheck with one job failed on the old test's copy: {detail}")
        with psycopg.connect(endpoint.conninfo(target.admin, target.admin_password()), autocommit=True) as copy:
            same = _md5_fingerprints(copy, schema) == source
    finally:
        target.sandbox.delete_server(name)
    return time.perf_counter() - start, same


def restore_test_by_size(rounds: int, sizes_mb: tuple[int, ...] = (100, 1000, 4000)) -> dict:
    """Restore-test time against the database size, beside a plain copy of the same base backup
    and beside the verification as it was before the speed-up (old), --rounds times per size
    (medians), with the levers compared on the same data."""
    import shutil
    import tempfile
    from concurrent.futures import Future
    from contextlib import contextmanager

    import psycopg

    from pcdb import backups
    from pcdb.context import RunbookContext
    from pcdb.install import run_directly
    from pcdb.steps import Steps
    from tests.conftest import destroy_all, new_target

    def restored_by(target):
        @contextmanager
        def restored(endpoint):
            with psycopg.connect(endpoint.conninfo(target.admin, target.admin_password()), autocommit=True) as c:
                yield c
        return restored

    # Every timed piece starts with nothing left to write back (os.sync first), so one piece's
    # dirty pages are not written during the next one's time.
    def plain_copy(target, backup, synced: list[float] | None = None) -> float:
        """A copy of the backup (the goal's baseline); into ``synced`` also the time until the
        copy is on the disk, which the restore test's server start pays for its copy (PostgreSQL
        syncs a restored data folder before recovery)."""
        scratch = Path(tempfile.mkdtemp(dir=target.sandbox.root))
        os.sync()
        start = time.perf_counter()
        shutil.copytree(backup.path, scratch / "copy")
        seconds = time.perf_counter() - start
        os.sync()
        if synced is not None:
            synced.append(time.perf_counter() - start)
        shutil.rmtree(scratch)
        return seconds

    class OneAfterAnother(Steps):
        """The lever: the source read first, then the restore (as until 2026-12-05), not beside it."""

        def beside(self, name, action, *, retry=False):
            done: Future = Future()
            done.set_result(self(name, action, retry=retry))
            return done

    def new_test(target, ctx, size, step=None) -> tuple[float, object]:
        os.sync()
        start = time.perf_counter()
        test = backups.restore_test(target, target.env, ctx.connect, restored_by(target), step=step)
        seconds = time.perf_counter() - start
        if not test.passed:
            raise RuntimeError(f"the restore test failed at {size} MB: {test.detail}")
        return seconds, test

    rows = []
    for size in sizes_mb:
        try:    # a sandbox of its own per size: the disk holds one size's servers, WAL and backups at a time
            target = new_target()
            ctx = RunbookContext(target.env, target)
            run_directly(ctx, phases=[1, 2, 3, 4])
            schema = target.env.service.schema_name
            # What does not grow with the data: the same restore test of the installed database with
            # no rows (the throw-away server's copy of ~1,000 files, start, recovery, promotion, stop).
            empty_backup = target.sandbox.take_backup()
            empty_copies = [plain_copy(target, empty_backup) for _ in range(rounds)]
            empties = [new_test(target, ctx, 0)[0] for _ in range(rounds)]
            with ctx.connect() as conn:
                # The load is set-up, not measured. Its keys grow with each row (request_id, the
                # customer, the line and the JSON's values), so each index fills at its right edge.
                # With random keys (request_id's UUIDs, a customer repeating every 50,000 rows) every
                # index page is touched between two checkpoints and logged whole after each one
                # (checksums are on): the WAL was 3.5x the data on the primary, the archive and its
                # geo copy, and a 4 GB load filled the disk (2026-12-02 and 2026-12-04).
                batch, first = 50_000, 1
                while conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] < size * 2**20:
                    conn.execute("INSERT INTO product_change.pc_product_change_history (request_id, line_number, "
                                 "customer_id, current_product_code, target_product_code, kos_request_data) "
                                 "SELECT 'R' || lpad(g::text, 12, '0'), '010-' || lpad(g::text, 9, '0'), "
                                 "'C' || lpad((g / 20)::text, 9, '0'), 'PLAN_A', 'PLAN_B', "
                                 "jsonb_build_object('req', lpad(g::text, 12, '0'), 'n', g) "
                                 "FROM generate_series(%s::bigint, %s::bigint) g", (first, first + batch - 1))
                    first += batch
                db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
                conn.execute("VACUUM (ANALYZE) product_change.pc_product_change_history")
            levers = _levers(target, ctx, schema)
            backup = target.sandbox.take_backup()
            copies, synced, news, olds, restores, steps, serial = [], [], [], [], [], [], []
            for _ in range(rounds):
                copies.append(plain_copy(target, backup, synced))
                seconds, test = new_test(target, ctx, size)
                news.append(seconds)
                serial.append(new_test(target, ctx, size, OneAfterAnother())[0])
                restores.append(test.seconds)
                steps.append({s["name"]: s["seconds"] for s in test.steps})
                old_seconds, agreed = _old_restore_test(target, ctx, schema)
                if not agreed:
                    raise RuntimeError(f"the old verification found a difference at {size} MB")
                olds.append(old_seconds)
            disk_used = shutil.disk_usage(target.sandbox.root).used
        finally:
            destroy_all()
        copy, new, old, empty = (statistics.median(x) for x in (copies, news, olds, empties))
        mb = db_bytes / 2**20
        rows.append({"database_mb": round(mb, 1), "backup_mb": round(backup.size_bytes / 2**20, 1),
                     "rounds": rounds, "plain_copy_seconds": round(copy, 3),
                     "restore_seconds": round(statistics.median(restores), 3),
                     "restore_test_total_seconds": round(new, 3), "old_restore_test_seconds": round(old, 3),
                     "empty_database": {"backup_mb": round(empty_backup.size_bytes / 2**20, 1),
                                        "plain_copy_seconds": round(statistics.median(empty_copies), 3),
                                        "restore_test_seconds": round(empty, 3)},
                     "plain_copy_on_disk_seconds": round(statistics.median(synced), 3),
                     "whole_test_vs_copy_on_disk_ratio": round(new / statistics.median(synced), 2),
                     "all_seconds": {"plain_copy": copies, "plain_copy_on_disk": synced, "new": news, "old": olds,
                                     "empty": empties, "empty_plain_copy": empty_copies,
                                     "source_read_before_the_restore": serial},
                     "source_read_before_the_restore_seconds": round(statistics.median(serial), 3),
                     "speed_up_vs_old": round(old / new, 2), "jobs": test.jobs,
                     "whole_test_vs_copy_ratio": round(new / copy, 2) if copy else None,
                     "old_test_vs_copy_ratio": round(old / copy, 2) if copy else None,
                     "seconds_per_gb": round(new / (mb / 1024), 2), "throughput_mb_per_s": round(mb / new, 1),
                     "size_dependent_seconds_per_gb": round((new - empty) / (mb / 1024), 2),
                     "old_seconds_per_gb": round(old / (mb / 1024), 2),
                     "file_system_used_gb_at_the_end": round(disk_used / 2**30, 1),
                     "steps_last_round": steps[-1], "levers": levers})
    per_gb = [r["seconds_per_gb"] for r in rows]
    grown = [r["size_dependent_seconds_per_gb"] for r in rows]
    return {"by_size": rows, "seconds_per_gb_spread": round(max(per_gb) / min(per_gb) - 1, 3) if per_gb else None,
            "size_dependent_seconds_per_gb_spread": round(max(grown) / min(grown) - 1, 3) if grown else None,
            "seconds_per_gb_between_sizes": [
                round((b["restore_test_total_seconds"] - a["restore_test_total_seconds"])
                      / ((b["database_mb"] - a["database_mb"]) / 1024), 2) for a, b in zip(rows, rows[1:])],
            "note": "new = the restore test as pcdb runs it (the moment marked; the restore: copy of the base "
                    "backup + WAL replay to the marker + promotion, while the source is fingerprinted in the "
                    "marked snapshot; pg_amcheck --jobs; the copy fingerprinted; hash_record_extended on "
                    "--jobs connections a side); old = the same restore, then md5 of every row's text one side "
                    "after the other and pg_amcheck with one job and heapallindexed; medians of --rounds; "
                    "size_dependent = (new - the same test of the installed database with no rows) per GB; "
                    "between_sizes = the added seconds per added GB from one size to the next; "
                    "source_read_before_the_restore = the same test with the source's fingerprint before the "
                    "restore instead of beside it (the lever, alternated with new in each round); each "
                    "size in a sandbox of its own; every timed piece starts after os.sync(); plain_copy_on_disk "
                    "= the copy and the sync after it"}


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> float:
    import subprocess
    import sys

    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pcdb {' '.join(args)} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - start


def service_verify(rounds: int) -> dict:
    """`pcdb verify-backups` end to end (a CLI process each), against the persistent server
    versus Prefect's temporary server (started by each process), side by side on one sandbox."""
    import os
    import tempfile

    from pcdb.context import RunbookContext
    from pcdb.install import run_directly
    from pcdb.sandbox.engine import _free_port
    from tests.conftest import destroy_all, new_target

    target = new_target()
    folder = target.env_path.parent
    port = _free_port(set())
    spec = folder / "bench.yaml"
    spec.write_text(target.env_path.read_text().replace("name: test", "name: bench") +
                    f"orchestrator:\n  home: {folder / 'orch'}\n  port: {port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PCDB_ORCHESTRATOR"))}
    env |= {"PREFECT_HOME": tempfile.mkdtemp(prefix="pcdb-bench-prefect-"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    timings: dict[str, list[float]] = {"temporary_server": [], "persistent_server": []}
    try:
        run_directly(RunbookContext(target.env, target), phases=[1, 2, 3, 4, 5, 6])
        _cli(["verify-backups", "--env", str(spec)], env, folder)  # the temporary server's first migration
        up = _cli(["server", "up", "--env", str(spec)], env, folder)
        for _ in range(rounds):
            _cli(["server", "down", "--env", str(spec)], env, folder)
            timings["temporary_server"].append(_cli(["verify-backups", "--env", str(spec)], env, folder))
            _cli(["server", "up", "--env", str(spec)], env, folder)
            timings["persistent_server"].append(_cli(["verify-backups", "--env", str(spec)], env, folder))
    finally:
        _cli(["server", "down", "--env", str(spec)], env, folder)
        destroy_all()
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {"median_seconds": med, "all_seconds": timings, "first_server_up_seconds": up,
            "saved_per_run_seconds": med["temporary_server"] - med["persistent_server"],
            "note": "each figure is a whole `pcdb verify-backups` process (Python start, imports, the flow, its "
                    "ledger row); the temporary server is started and stopped by that process"}


def run_start(rounds: int) -> dict:
    """How soon a deployed run starts once the worker picks it up (process work pool), from
    Prefect's own state timestamps (Pending: picked up; Running: the flow's body begins), beside
    the same flow started by a `pcdb cost` process (process start to Running). The cost runbook:
    read only, on an installed sandbox, completed each time."""
    import tempfile

    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.deployments import run_deployment

    from tests.service.conftest import Service, wait_until

    folder = Path(tempfile.mkdtemp(prefix="pcdb-bench-run-start-", dir="/tmp"))
    folder.chmod(0o711)             # the sandbox's server user passes through to its root
    svc = as_a_dba_runs_it(Service(folder, name="bench-rs"))
    timings: dict[str, list[float]] = {"deployed_pickup_to_running": [], "deployed_poll_wait": [],
                                       "cli_process_to_running": []}

    def states(run_id) -> dict[str, datetime]:
        with get_client(sync_client=True) as client:
            return {s.type.value: s.timestamp for s in client.read_flow_run_states(run_id)}

    try:
        svc.pcdb("server", "up", "--env", str(svc.spec))
        svc.pcdb("install", "--env", str(svc.spec))
        warm_start_answers()
        with svc.api():
            for _ in range(rounds):
                run = run_deployment("cost/cost-bench-rs", timeout=0)
                with get_client(sync_client=True) as client:
                    final = wait_until(lambda run_id=run.id: (r := client.read_flow_run(run_id)).state.is_final() and r,
                                       "the deployed cost run's end", timeout=300, interval=0.1)
                if not final.state.is_completed():
                    raise RuntimeError(f"the deployed cost run ended {final.state.name}: {final.state.message}")
                at = states(run.id)
                timings["deployed_pickup_to_running"].append((at["RUNNING"] - at["PENDING"]).total_seconds())
                timings["deployed_poll_wait"].append((at["PENDING"] - at["SCHEDULED"]).total_seconds())
                began = datetime.now(timezone.utc)
                svc.pcdb("cost", "--env", str(svc.spec))
                with get_client(sync_client=True) as client:
                    mine = FlowRunFilter(tags=FlowRunFilterTags(all_=["pcdb-env:bench-rs"]),    # the CLI's own run
                                         deployment_id=FlowRunFilterDeploymentId(is_null_=True),
                                         state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])))
                    last = client.read_flow_runs(flow_run_filter=mine, sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
                timings["cli_process_to_running"].append((states(last.id)["RUNNING"] - began).total_seconds())
    finally:
        svc.pcdb("server", "down", "--env", str(svc.spec), check=False)
        svc.pcdb("sandbox", "destroy", "--env", str(svc.spec), "--yes", check=False)
        shutil.rmtree(folder, ignore_errors=True)
    return {"seconds": {k: {"min": min(v), "median": statistics.median(v), "max": max(v)} for k, v in timings.items()},
            "all_seconds": timings, "goal_seconds": 5.0,
            "note": "deployed: from the worker's pick-up (the run's Pending state) to its Running state, read from "
                    "Prefect's state timestamps; the wait before the pick-up is the worker's poll interval "
                    "(orchestrator.worker_poll, 1 s here, 2 s by default), shown as deployed_poll_wait. "
                    "cli: from starting a `pcdb cost` process to its flow run's Running state, the command "
                    "forked from the warm start `server up` starts (cli/warm.py)"}


def machine_yardstick() -> float:
    """How fast this machine is right now: the quickest of three `python -c "import prefect"`
    processes (1.00 s on a quiet 2026-12-05 morning, 1.84-1.97 s the same hour while the host was
    busy). Whole-process figures such as P2 move with it, so they are read beside it."""
    import subprocess
    import sys

    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import prefect"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def as_a_dba_runs_it(svc):
    """The service tests' helper with the run logs a DBA's `./dev up` ships (INFO, Prefect's default):
    the test suite's WARNING ships none of a no-change re-run's 94 log lines, and a re-run measured
    with it was 0.15 s faster than the same re-run as a DBA runs it (docs/benchmarks.md, P2). And
    the commands' warm start on, as a DBA's shell has it (the tests' PCDB_WARM=0 aside)."""
    svc.extra_env["PREFECT_LOGGING_LEVEL"] = "INFO"
    svc.extra_env["PCDB_WARM"] = "1"        # `server up` starts the warm start, whatever this shell says
    return svc


def warm_start_answers() -> None:
    """The warm start `server up` began (cli/warm.py, this HOME's) answers with this code, as
    `server up` waits for: the commands measured next are forked, not cold."""
    from cli import warm

    if warm.ready() != warm.code_fingerprint():
        raise RuntimeError(f"`pcdb server up` returned without its warm start answering (see {warm.log_file()})")


def interactive_commands(rounds: int) -> dict:
    """`pcdb health`, `pcdb history` and `pcdb incident status` as whole processes, 10 runs each
    (or --rounds, if more), with the persistent server up (the every-minute health deployment
    running) and with it down; min, median and max. Goal: 1 s up, 2 s down."""
    import tempfile

    from prefect import get_client
    from prefect.deployments import run_deployment

    from tests.service.conftest import Service, wait_until

    folder = Path(tempfile.mkdtemp(prefix="pcdb-bench-cli-", dir="/tmp"))
    folder.chmod(0o711)             # the sandbox's server user passes through to its root
    svc = as_a_dba_runs_it(Service(folder, name="bench-cli", health="    every: 1min\n"))
    commands = {"health": ["health"], "history": ["history"], "incident status": ["incident", "status"]}
    runs = max(rounds, 10)
    figures: dict[str, dict] = {}
    said: dict[str, str] = {}

    def measure(label: str) -> None:
        for name, args in commands.items():
            seconds = []
            for _ in range(runs):
                start = time.perf_counter()
                result = svc.pcdb(*args, "--env", str(svc.spec), "--json", check=False)
                seconds.append(time.perf_counter() - start)
                if result.returncode not in (0, 1):
                    raise RuntimeError(f"pcdb {name} exited {result.returncode}: {result.stderr[-500:]}")
            if name == "health":
                said[label] = json.loads(result.stdout)["source"]["kind"]
            figures.setdefault(label, {})[name] = {"min": min(seconds), "median": statistics.median(seconds),
                                                   "max": max(seconds), "all": seconds}

    try:
        svc.pcdb("server", "up", "--env", str(svc.spec))
        svc.pcdb("install", "--env", str(svc.spec))
        warm_start_answers()
        with svc.api():                # the every-minute deployment's first result, without waiting for its minute
            run = run_deployment("health/health-bench-cli", timeout=0)
            with get_client(sync_client=True) as client:
                wait_until(lambda: client.read_flow_run(run.id).state.is_final(), "the health run", timeout=300)
        measure("server_up")
        svc.pcdb("server", "down", "--env", str(svc.spec))
        measure("server_down")
    finally:
        svc.pcdb("server", "down", "--env", str(svc.spec), check=False)
        svc.pcdb("sandbox", "destroy", "--env", str(svc.spec), "--yes", check=False)
        shutil.rmtree(folder, ignore_errors=True)
    return {"seconds": figures, "runs_each": runs, "health_answered_from": said,
            "goal_seconds": {"server_up": 1.0, "server_down": 2.0},
            "note": "each figure is a whole process (Python start, imports, the answer, --json). health with the "
                    "server up reads the every-minute deployment's latest result from the health store; with it "
                    "down it evaluates the rules in process, recording and notifying nothing (source.kind says "
                    "which); `pcdb health --now` is the flow run. With the server up each command is forked from "
                    "the warm start `server up` starts (cli/warm.py); `server down` stops it, so the server-down "
                    "figures are cold commands"}


def rerun(rounds: int) -> dict:
    """P2: `pcdb install` again on an installed environment with `pcdb server up`, as a whole
    process, --rounds times (at least 5): min, median and max, and each phase's seconds from the
    run's JSON. Asserted: nothing changed and Phase 7 relied on the first install's failover and
    PITR checks (read-only). Goal: 3 s."""
    import tempfile

    from tests.service.conftest import Service

    folder = Path(tempfile.mkdtemp(prefix="pcdb-bench-rerun-", dir="/tmp"))
    folder.chmod(0o711)             # the sandbox's server user passes through to its root
    svc = as_a_dba_runs_it(Service(folder, name="bench-rerun"))
    runs = max(rounds, 5)
    seconds: dict[str, list[float]] = {"warm": [], "cold": []}
    phases: list[dict] = []
    yardstick = {"before": machine_yardstick()}
    try:
        svc.pcdb("server", "up", "--env", str(svc.spec))
        first = svc.json("install", "--env", str(svc.spec))
        if first["status"] != "completed":
            raise RuntimeError(f"the first install did not complete: {first}")
        warm_start_answers()
        for _ in range(runs):
            for side in ("warm", "cold"):       # alternated: the same machine's moment for both
                svc.extra_env["PCDB_WARM"] = "1" if side == "warm" else "0"
                start = time.perf_counter()
                result = svc.pcdb("install", "--env", str(svc.spec), "--json")
                seconds[side].append(time.perf_counter() - start)
                outcome = json.loads(result.stdout)
                changed = [p for p in outcome["phases"] if p.get("changes")]
                if outcome["status"] != "completed" or changed:
                    raise RuntimeError(f"the re-run was not a no-change run: {outcome}")
                if "not repeated" not in result.stdout + Path(outcome["report"]).read_text():
                    raise RuntimeError("the re-run repeated Phase 7's failover and PITR checks")
                phases.append({"side": side, **{str(p["number"]): p["seconds"] for p in outcome["phases"]}})
        from cli import warm

        served = sum(" runs `install`" in line for line in Path(warm.log_file()).read_text().splitlines())
        if served < runs:
            raise RuntimeError(f"only {served} of the {runs} warm re-runs were forked from the warm start")
    finally:
        svc.pcdb("server", "down", "--env", str(svc.spec), check=False)
        svc.pcdb("sandbox", "destroy", "--env", str(svc.spec), "--yes", check=False)
        shutil.rmtree(folder, ignore_errors=True)
    yardstick["after"] = machine_yardstick()

    def figures(values: list[float]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}

    return {"seconds": figures(seconds["warm"]), "cold_seconds": figures(seconds["cold"]),
            "phase_seconds": phases, "goal_seconds": 3.0, "import_prefect_seconds": yardstick,
            "note": "each figure is a whole `pcdb install --env ENV --json` process against the running server, its "
                    "run logs at INFO as a DBA's `./dev up` ships them (the flow runs in the command's process, its "
                    "runs and tasks recorded by the server). seconds: as a DBA meets it with `pcdb server up`, the "
                    "command forked from the warm start (cli/warm.py; asserted from its log); cold_seconds: the same "
                    "command with PCDB_WARM=0 (Python, Prefect and the flows imported by the command), alternated "
                    "with it. Asserted: no phase changed anything and Phase 7 relied on the first install's "
                    "disruptive checks"}


def first_up(rounds: int) -> dict:  # noqa: ARG001 - one fresh clone is the measurement
    """The first `./dev up` on a fresh clone with a fresh HOME: wall time, and each step of it
    (setup: venv and pip; the server and worker; the install through its deployment; status)."""
    import os
    import subprocess
    import tempfile

    from pcdb.sandbox.engine import _free_port

    work = Path(tempfile.mkdtemp(prefix="pcdb-first-up-", dir="/tmp"))
    os.chmod(work, 0o711)           # the sandbox's server user passes through; nobody lists the clone
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(["git", "clone", "-q", str(repo), str(work / "pcdb")], check=True)
    clone = work / "pcdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PCDB_", "VIRTUAL_ENV"))}
    env |= {"HOME": str(work / "home"), "PCDB_SANDBOX_ROOT": str(work / "sandbox"),
            "PCDB_ORCHESTRATOR_HOME": str(work / "orchestrator"), "PCDB_PREFECT_PORT": str(_free_port(set()))}
    (work / "home").mkdir()
    steps = [("setup (venv, pip install, PostgreSQL check)", ["./dev", "setup"]),
             ("pcdb server up (server start with its first migration, pool, deployments, automations, worker)",
              [".venv/bin/pcdb", "server", "up", "--env", "local"]),
             ("pcdb install --deployed (the whole install on the worker)",
              [".venv/bin/pcdb", "install", "--env", "local", "--deployed"]),
             ("pcdb sandbox status + server status", ["sh", "-c", ".venv/bin/pcdb sandbox status --env local && "
                                                      ".venv/bin/pcdb server status --env local"])]
    figures = {}
    try:
        for label, cmd in steps:
            start = time.perf_counter()
            result = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=1800, check=False)
            figures[label] = round(time.perf_counter() - start, 2)
            if result.returncode != 0:
                raise RuntimeError(f"{label} failed: {result.stderr[-2000:]}")
        whole_start = time.perf_counter()
        again = subprocess.run(["./dev", "up"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800, check=False)
        second = time.perf_counter() - whole_start
        if again.returncode != 0:
            raise RuntimeError(f"second ./dev up failed: {again.stderr[-2000:]}")
    finally:
        subprocess.run(["./dev", "down"], cwd=clone, env=env, capture_output=True, timeout=600, check=False)
        subprocess.run([str(clone / ".venv/bin/pcdb"), "sandbox", "destroy", "--env", "local", "--yes"], cwd=clone,
                       env=env, capture_output=True, timeout=600, check=False)
    return {"first_up_seconds": round(sum(figures.values()), 2), "steps_seconds": figures,
            "second_up_seconds": round(second, 2),
            "note": "fresh `git clone` of this repository and a fresh HOME; the PostgreSQL packages were already "
                    "installed on this machine (on a bare Debian 12, apt adds about a minute, see docs/benchmarks.md)"}


def unplanned_crash(rounds: int) -> dict:
    """Fault injection with an independent writer: the primary's postmaster SIGKILLed while the
    supervisor runs (auto_failover_after from the spec, 10 s), at a random moment, or right after
    the supervisor's check connection is accepted (seen in the server log: log_connections), and
    once right after a 3 GiB WAL burst. Each round: was there an automatic failover, the writer's
    longest gap, acknowledged rows lost, and how long the new primary ran without its synchronous
    standby. Beside them, the same writer through planned and forced failovers pcdb drives."""
    from benchmarks.faults import unplanned_crash as measure

    return measure(rounds)


def partition_archive(rounds: int, rows: int = 1_000_000) -> dict:
    """Archive + proof + detach + drop of one expired KOS-log partition of ``rows`` rows (the
    maintenance's partition step), against a plain `pg_dump -Fc` of the same partition."""
    import subprocess
    import tempfile

    from pcdb import maintenance, schema
    from pcdb.context import RunbookContext
    from pcdb.install import run_directly
    from tests.conftest import destroy_all, new_target

    plain, ours = [], []
    try:
        t = new_target()
        _up(t)
        ctx = RunbookContext(t.env, t)
        run_directly(ctx, phases=[4])
        tools = maintenance.PgTools(ctx)
        for k in range(rounds):
            start = maintenance.add_months(datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0,
                                                                              microsecond=0), -(20 + k))
            end = maintenance.add_months(start, 1)
            name = schema.partition_name(start.date())
            with ctx.connect() as conn:
                conn.execute(f"CREATE TABLE product_change.{name} PARTITION OF product_change.{schema.KOS_LOG} "
                             f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
                conn.execute(f"INSERT INTO product_change.{schema.KOS_LOG} (request_id, integration_type, is_success, "
                             "request_data, response_time_ms, created_at) SELECT 'req-' || g, 'PRODUCT_CHANGE', "
                             "g %% 7 > 0, jsonb_build_object('n', g, 'plan', 'LTE-59'), g %% 3000, "
                             "%s::timestamptz + (g %% 2500000) * interval '1 second' FROM generate_series(1, %s) g",
                             (start, rows))
                conn.execute(f"VACUUM ANALYZE product_change.{name}")
            folder = Path(tempfile.mkdtemp(prefix="pcdb-bench-"))
            began = time.perf_counter()
            tools.dump("product_change", name, folder / "plain.dump")
            plain.append(time.perf_counter() - began)
            subprocess.run(["rm", "-rf", str(folder)], check=True)
            began = time.perf_counter()
            out = maintenance.run(ctx, ["partitions"])
            ours.append(time.perf_counter() - began)
            assert out.partitions["dropped"] == [name] and not out.problems, out
        t.sandbox.destroy()
    finally:
        destroy_all()
    return {"rows": rows, "plain_pg_dump_seconds": {"median": statistics.median(plain), "n": len(plain)},
            "archive_prove_detach_drop_seconds": {"median": statistics.median(ours), "n": len(ours)},
            "ratio": round(statistics.median(ours) / statistics.median(plain), 2),
            "note": "ours = pg_dump -Fc + SHA-256 + copy to both backup stores + fetch back + SHA-256 + restore "
                    "into a scratch database + two content checksums (live and restored) + DETACH CONCURRENTLY + "
                    "a third checksum + DROP; the proof (restore + checksums) is most of the difference"}


def health_run(rounds: int) -> dict:
    """One health run on an installed sandbox: wall time (goal <= 2 s: a one-minute schedule has
    room), and the load on the monitored server (statements and their execution time per run)."""
    import tempfile

    from pcdb import health
    from pcdb.context import RunbookContext
    from pcdb.install import run_directly
    from tests.conftest import destroy_all, new_target

    walls, statements, server_ms = [], [], []
    try:
        t = new_target()
        _up(t)
        ctx = RunbookContext(t.env, t)
        run_directly(ctx, phases=[3, 4, 5, 6])
        store = health.Store(Path(tempfile.mkdtemp(prefix="pcdb-bench-health-")) / "h.sqlite")
        quiet = lambda *args: {}  # noqa: E731 - notifications are not the measured work
        health.run(ctx, store, quiet)                        # warm: counters exist, caches loaded
        for _ in range(rounds):
            with ctx.connect() as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
            began = time.perf_counter()
            health.run(ctx, store, quiet)
            walls.append(time.perf_counter() - began)
            with ctx.connect() as conn:
                calls, ms = conn.execute("SELECT sum(calls), sum(total_exec_time) FROM pg_stat_statements "
                                         "WHERE query NOT LIKE '%pg_stat_statements%'").fetchone()
            statements.append(int(calls or 0))
            server_ms.append(float(ms or 0))
        t.sandbox.destroy()
    finally:
        destroy_all()
    return {"wall_seconds": {"median": statistics.median(walls), "worst": max(walls), "n": len(walls)},
            "statements_per_run": statistics.median(statements),
            "server_execution_ms_per_run": {"median": round(statistics.median(server_ms), 2),
                                            "worst": round(max(server_ms), 2)},
            "goal_seconds": 2.0,
            "note": "pcdb.health.run directly (sample + evaluate + history); statements counted by "
                    "pg_stat_statements after a reset in this throw-away sandbox (the reset itself excluded)"}


def _naive_capacity(db, quota: float, folder: Path) -> float:
    """The baseline: every 1-minute point through Python (parse, ordinary least squares over all
    of them), and all of them drawn with pyplot. Returns days to 75 %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[float], list[float]]] = {}
    for at, metric, value in db.execute("SELECT at, metric, value FROM samples ORDER BY at"):
        xs, ys = series.setdefault(metric, ([], []))
        xs.append(datetime.fromisoformat(at).timestamp() / 86400)
        ys.append(value)
    xs, ys = series["database_bytes"]
    slope, intercept = statistics.linear_regression(xs, ys)
    for metric in ("active_connections", "cpu_percent", "memory_percent", "xid_age"):
        statistics.linear_regression(*series[metric])
    days = (0.75 * quota - (intercept + slope * xs[-1])) / slope
    for metric in ("database_bytes", "active_connections", "cpu_percent"):
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot(*series[metric])
        fig.savefig(folder / f"naive-{metric}.png", dpi=72)
        plt.close(fig)
    return days


def _estimator_errors(seeds: range) -> dict:
    """Days to 75 % against the known truth on generated histories, with and without a bulk load:
    the drift model (pcdb.forecast) against least squares, Theil-Sen and statsmodels' Huber fit
    on the same daily medians."""
    import numpy as np

    from pcdb import forecast, synthetic

    try:
        import statsmodels
        import statsmodels.api as sm
    except ImportError:
        sm = statsmodels = None
    end = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    errors: dict[str, dict[str, list[float]]] = {}
    for bulk in (None, (40.0, 12 * 2**30)):
        label = "with a 12 GiB bulk load" if bulk else "steady growth"
        for seed in seeds:
            h = synthetic.History(end=end, seed=seed, bulk_load=bulk, step_minutes=10, metrics=("database_bytes",))
            t, values = synthetic.series(h)
            hours = (t // 3600).astype(np.int64)
            uniq, inverse = np.unique(hours, return_inverse=True)
            avg = np.bincount(inverse, values["database_bytes"]) / np.bincount(inverse)
            d = forecast.daily(uniq * 3600.0, avg)
            x, y = d.day.astype(float), d.value
            truth = h.true_days_to(0.75 * h.quota_bytes) + (end.timestamp() / 86400 - (d.day[-1] + 0.5))
            model = forecast.drift(d)
            estimates = {"drift (pcdb)": (0.75 * h.quota_bytes - model.level) / model.rate}
            slope, intercept = np.polyfit(x, y, 1)
            estimates["least squares"] = (0.75 * h.quota_bytes - (intercept + slope * x[-1])) / slope
            ts = forecast.theil_sen(x, y)
            ts_level = float(np.median(y - ts * x)) + ts * x[-1]
            estimates["Theil-Sen"] = (0.75 * h.quota_bytes - ts_level) / ts
            if sm is not None:
                fit = sm.RLM(y, sm.add_constant(x), M=sm.robust.norms.HuberT()).fit()
                estimates["statsmodels RLM (Huber)"] = (0.75 * h.quota_bytes - (fit.params[0] + fit.params[1] * x[-1])
                                                        ) / fit.params[1]
            for name, days in estimates.items():
                errors.setdefault(name, {}).setdefault(label, []).append(100 * (days - truth) / truth)
    return {name: {label: {"mean_error_percent": round(statistics.mean(v), 1),
                           "worst_abs_error_percent": round(max(abs(e) for e in v), 1), "n": len(v)}
                   for label, v in by.items()} for name, by in errors.items()} | {
        "statsmodels": statsmodels.__version__ if statsmodels else "not installed (pip install statsmodels to compare)"}


def _history_from_samples(db, start, end) -> dict:
    """capacity.history_from_store's hourly figures, rolled up from the 1-minute samples themselves:
    the analysis timed against the 800,000-point budget (the runbook reads the roll-ups the
    health runbook keeps as it records)."""
    import numpy as np

    from pcdb.capacity import STORE_SOURCES, Hourly

    out = {}
    for name, source in STORE_SOURCES.items():
        rows = db.execute("SELECT substr(at, 1, 13), avg(value), max(value) FROM samples "
                          "WHERE metric = ? AND at >= ? AND at <= ? GROUP BY 1",
                          (source, start.isoformat(), end.isoformat())).fetchall()
        hours = np.array([r[0] for r in rows], dtype="datetime64[h]").astype("datetime64[s]").astype(float)
        out[name] = Hourly.of([(t, a, m) for t, (_, a, m) in zip(hours, rows)])
    return out



def capacity_analysis(rounds: int) -> dict:
    """P5: 93 days x 1-minute samples x 6 metrics (803,520 points) in a health store; the whole
    analysis with its three plots (goal <= 2 s), side by side with a naive baseline, and the
    estimators' accuracy on histories with a known answer."""
    import tempfile
    from datetime import timedelta

    from pcdb import capacity, health, synthetic
    from pcdb.config import load_environment

    env = load_environment("local")
    folder = Path(tempfile.mkdtemp(prefix="pcdb-bench-capacity-"))
    end = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    h = synthetic.History(end=end, metrics=("database_bytes", "storage_percent", "active_connections",
                                            "cpu_percent", "memory_percent", "xid_age"))
    store = health.Store(folder / "health.sqlite")
    began = time.perf_counter()
    points = synthetic.write(store.db, h)
    generate = time.perf_counter() - began

    def whole(loader) -> tuple[float, dict]:
        began = time.perf_counter()
        cstore = capacity.Store(folder / f"capacity-{time.perf_counter_ns()}.sqlite")
        history = loader(store.db, end - timedelta(weeks=13), end)
        result = capacity.analyse(env, history, cstore, end, quota_bytes=h.quota_bytes)
        capacity.plots(result, history, folder, f"capacity-{time.perf_counter_ns()}")
        capacity.markdown(result, {})
        cstore.close()
        return time.perf_counter() - began, result

    first, result = whole(capacity.history_from_store)      # cold: matplotlib imported here
    rollups = [whole(capacity.history_from_store)[0] for _ in range(rounds)]
    raw = [whole(_history_from_samples)[0] for _ in range(rounds)]
    began = time.perf_counter()
    naive_days = _naive_capacity(store.db, h.quota_bytes, folder)
    naive = time.perf_counter() - began
    truth = h.true_days_to(0.75 * h.quota_bytes)
    return {"points": points, "generate_seconds": round(generate, 2),
            "analysis_with_plots_seconds": {"first_in_process": round(first, 3),
                                            "from_hourly_rollups": {"median": round(statistics.median(rollups), 3),
                                                                    "worst": round(max(rollups), 3)},
                                            "from_1_minute_samples": {"median": round(statistics.median(raw), 3),
                                                                      "worst": round(max(raw), 3)}},
            "naive_baseline_seconds": round(naive, 2), "goal_seconds": 2.0,
            "days_to_75_percent": {"truth": round(truth, 1), "pcdb": result["storage"]["days_to_warning"],
                                   "naive_least_squares_on_all_points": round(naive_days, 1)},
            "estimators_days_to_75_percent_error": _estimator_errors(range(1, 21)),
            "note": "pcdb: hourly roll-ups (what the runbook reads; the health runbook keeps them as it records) "
                    "or the same rolled up from the 1-minute samples in SQL; drift model on daily medians; 3 PNGs "
                    "via matplotlib's Figure (Agg). Naive: every point parsed in Python, least squares over all "
                    "points, pyplot drawing every point."}


def ledger_verify(rounds: int) -> dict:
    from benchmarks.ledger import ledger_verify as measure

    return measure(rounds)


def forecast_calibration(rounds: int) -> dict:
    """How often the capacity forecast's 90 % interval holds the true date: over 40 × rounds
    seeded histories (bulk loads, DROPs, gaps, the daily and weekly cycles, each ending at its own
    hour of the week); the true date is when each history's own storage, carried on by the same
    process, reaches 75 %. The test holds the line at 85 % over 60 of them."""
    import tempfile

    from pcdb import capacity, health, synthetic
    from pcdb.config import load_environment

    env = load_environment("local")
    folder = Path(tempfile.mkdtemp(prefix="pcdb-calibration-"))
    inside, widths, errors = 0, [], []
    count = 40 * rounds
    for seed in range(count):
        h = synthetic.varied(seed, datetime(2026, 11, 2, tzinfo=timezone.utc))
        hs = health.Store(folder / f"h{seed}.sqlite")
        synthetic.write(hs.db, h)
        points = capacity.history_from_store(hs.db, h.end - timedelta(weeks=13), h.end)
        hs.close()
        s = capacity.analyse(env, points, capacity.Store(folder / f"c{seed}.sqlite"), h.end,
                             quota_bytes=h.quota_bytes)["storage"]
        truth = h.realised_days_to(0.75 * h.quota_bytes)
        low, high = s["interval"]
        inside += low <= truth <= high
        widths.append((high - low) / truth)
        errors.append(abs(s["days_to_warning"] - truth) / truth)
    shutil.rmtree(folder, ignore_errors=True)
    return {"histories": count, "interval_percent": 90, "true_dates_inside_percent": round(100 * inside / count, 1),
            "median_interval_width_percent_of_days": round(100 * statistics.median(widths), 1),
            "median_abs_error_percent_of_days": round(100 * statistics.median(errors), 2),
            "p90_abs_error_percent_of_days": round(100 * sorted(errors)[int(0.9 * count)], 2)}


BENCHMARKS = {"sandbox": sandbox_lifecycle, "install": install_overhead, "rerun": rerun, "zone-drills": zone_drills,
              "drill-overhead": drill_overhead, "restore-by-size": restore_test_by_size,
              "service-verify": service_verify, "run-start": run_start, "cli": interactive_commands,
              "first-up": first_up, "unplanned-crash": unplanned_crash,
              "partition-archive": partition_archive, "health-run": health_run, "capacity": capacity_analysis,
              "ledger-verify": ledger_verify, "forecast-calibration": forecast_calibration}


def _file_system() -> str:
    """The file system the benchmark's sandboxes keep their files on, as /proc/mounts names it."""
    from tests.conftest import SCRATCH, mount_of

    folder = SCRATCH or Path("/tmp")
    mount = mount_of(folder)
    return f"{folder} ({mount[1]} on {mount[2]})" if mount else str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--sizes-mb", default="100,1000,4000", help="restore-by-size: database sizes")
    args = parser.parse_args()
    # The sandboxes' files on this machine's disk, where an operator's sandbox keeps them: the
    # tests' tmpfs (tests/conftest.py: _scratch) would measure memory instead. Set it to a folder
    # to measure there on purpose; the figures say which file system it was.
    os.environ.setdefault("PCDB_TEST_SCRATCH", "off")
    RESULTS.mkdir(exist_ok=True)
    for name in args.names:
        figures = {"measured_at": datetime.now(timezone.utc).isoformat(), "machine": platform.platform(),
                   "rounds": args.rounds, "sandbox_files_on": _file_system(),
                   name: (BENCHMARKS[name](args.rounds, tuple(int(x) for x in args.sizes_mb.split(",")))
                          if name == "restore-by-size" else BENCHMARKS[name](args.rounds))}
        out = RESULTS / f"{name}.json"
        out.write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        print(f"written to {out}")


if __name__ == "__main__":
    main()
