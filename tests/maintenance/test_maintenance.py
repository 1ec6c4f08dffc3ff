"""Monthly maintenance on a real sandbox: the KOS log never runs out of partitions, expired ones
are archived, proved by a restore, detached and dropped (and nothing else is touched), a run
killed at any step is finished by the next with nothing lost, bad archives and names stop the
drop, and the application keeps inserting through all of it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb import clock, schema
from pcdb import maintenance as m
from pcdb.config import load_environment
from pcdb.context import RunbookContext
from pcdb.install import run_directly
from pcdb.sql import query
from tests.conftest import Receiver, new_target, read_as_nobody

pytestmark = pytest.mark.postgres

SCHEMA = "product_change"
LOG = f"{SCHEMA}.{schema.KOS_LOG}"
ROWS = 150   # per past month
SEOUL = ZoneInfo("Asia/Seoul")


@pytest.fixture(scope="module")
def env():
    """A sandbox installed through Phase 6, with 15 months of past KOS-log partitions full of rows."""
    target = new_target("operations:\n  maintenance:\n    unused_index_min_stats_days: 0\n    reindex_min_size: 1MB\n")
    target.ensure_resource_group()
    target.ensure_server()
    target.ensure_replica()
    target.ensure_database()
    ctx = RunbookContext(target.env, target)
    run_directly(ctx, phases=[3, 4, 5, 6])
    with conn_of(target) as conn:
        for k in range(1, 16):
            add_past_month(conn, k)
    yield target
    target.sandbox.destroy()


def conn_of(target):
    return psycopg.connect(target.endpoint().conninfo(target.admin, target.admin_password()), autocommit=True)


def month_start(k: int) -> datetime:
    """The first moment (Seoul) of the month ``k`` months before this one."""
    now = clock.now().astimezone(SEOUL)
    return m.add_months(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), -k)


def past_name(k: int) -> str:
    return schema.partition_name(month_start(k).date())


def add_past_month(conn, k: int, name: str | None = None) -> None:
    start, end = month_start(k), month_start(k - 1)
    table = psycopg.sql.Identifier(SCHEMA, name or past_name(k))
    conn.execute(psycopg.sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
        table, psycopg.sql.Identifier(SCHEMA, schema.KOS_LOG), psycopg.sql.Literal(start), psycopg.sql.Literal(end)))
    conn.execute(f"INSERT INTO {LOG} (request_id, integration_type, is_success, request_data, response_time_ms, "
                 "created_at) SELECT 'req-' || g, 'PRODUCT_CHANGE', g %% 3 > 0, jsonb_build_object('n', g), g, "
                 "%s::timestamptz + g * interval '1 hour' FROM generate_series(1, %s) g", (start, ROWS))


def checksum(conn, table: str) -> tuple[int, int]:
    return m.content_checksum(conn, SCHEMA, table)


def maintain(target, *args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(app, ["maintain", "--env", str(target.env_path), "--json", *args])
    try:
        return result.exit_code, json.loads(result.stdout), result.stderr
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON: {result.exit_code} {result.stdout[-1500:]} {result.stderr[-3000:]}") from None


def killed_at(point: str, target, only: str = "partitions") -> None:
    """``pcdb.maintenance.run`` in a process that dies (SIGKILL) at ``point``."""
    script = ("from pcdb.config import load_environment\nfrom pcdb.targets.sandbox import SandboxTarget\n"
              "from pcdb.context import RunbookContext\nfrom pcdb import maintenance\n"
              f"t = SandboxTarget(load_environment({str(target.env_path)!r}))\n"
              f"maintenance.run(RunbookContext(t.env, t), [{only!r}])\n")
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PCDB_CRASH_AT": point},
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == -signal.SIGKILL, f"did not die at {point}: {result.returncode} {result.stderr[-2000:]}"


def restore_checksum(target, archive: str, table: str) -> tuple[int, int]:
    """Restore an archive file by hand into a database of its own: what it really holds."""
    ctx = RunbookContext(target.env, target)
    tools = m.PgTools(ctx)
    m._drop_proof_database(ctx)
    with ctx.connect(dbname="postgres") as conn:
        conn.execute(f"CREATE DATABASE {m.PROOF_DATABASE}")
    with ctx.connect(dbname=m.PROOF_DATABASE) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
    listing = Path(tempfile.mkdtemp(prefix="pcdb-proof-")) / "toc.list"
    try:
        tools.restore_table(Path(archive), listing)
    finally:
        shutil.rmtree(listing.parent, ignore_errors=True)
    with ctx.connect(dbname=m.PROOF_DATABASE) as conn:
        found = checksum(conn, table)
    m._drop_proof_database(ctx)
    return found


def test_a_retention_shorter_than_the_archive_policy_is_refused_at_config_check(tmp_path):
    spec = tmp_path / "short.yaml"
    spec.write_text("extends: local\nname: short\noperations:\n  log_partition_retention_months: 6\n")
    with pytest.raises(Exception, match="shorter than the archive policy allows"):
        load_environment(spec)
    result = CliRunner().invoke(app, ["maintain", "--env", str(spec), "--dry-run"])
    assert result.exit_code != 0 and "archive_min_retention_months: 12" in result.stderr


def test_an_unknown_step_is_refused_naming_the_steps(env):
    result = CliRunner().invoke(app, ["maintain", "--env", str(env.env_path), "--only", "partitions,vacuum_full"])
    assert result.exit_code == 1 and "vacuum_full" in result.stderr and "slow_queries" in result.stderr


def test_time_travel_the_three_expired_months_are_archived_proved_and_dropped_and_nothing_else(
        env, prefect_harness):
    expired = [past_name(k) for k in (15, 14, 13)]
    kept = [past_name(k) for k in range(1, 13)]
    with conn_of(env) as conn:
        before = {name: checksum(conn, name) for name in expired + kept}

    code, plan, _ = maintain(env, "--only", "partitions", "--dry-run")
    assert code == 0 and plan["dry_run"] is True and plan["verified"] is None
    assert plan["partitions"]["dropped"] == expired and [a["name"] for a in plan["partitions"]["archived"]] == expired
    with conn_of(env) as conn:
        assert {name: checksum(conn, name) for name in expired + kept} == before    # the dry run changed nothing

    code, done, _ = maintain(env, "--only", "partitions")
    assert code == 0, done["problems"]
    parts = done["partitions"]
    assert set(done) >= {"partitions", "statistics", "indexes", "slow_queries", "accounts", "report"}
    assert [a["name"] for a in parts["archived"]] == expired and parts["detached"] == expired
    assert parts["dropped"] == expired and parts["ahead_months"] >= 3 and done["verified"] is True
    for archived in parts["archived"]:
        assert archived["verified"] and archived["rows"] == ROWS and len(archived["sha256"]) == 64
        # Restored by hand from the stored archive: the very rows the partition had.
        assert restore_checksum(env, archived["archive"], archived["name"]) == before[archived["name"]]
    with conn_of(env) as conn:
        for name in expired:
            assert conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{name}",)).fetchone()[0] is None
        assert {name: checksum(conn, name) for name in kept} == {name: before[name] for name in kept}
        # Each dropped partition's size was recorded while it existed: the cost review values the retention.
        sizes = dict(conn.execute("SELECT partition, bytes FROM pcdb.partition_archive WHERE state = 'dropped'"))
        assert set(expired) <= set(sizes) and all(sizes[name] > 8192 for name in expired)
        freed, dropped = conn.execute(query("maintenance.sql", "retention_freed")).fetchone()
        assert dropped >= 3 and freed >= sum(sizes[name] for name in expired)
        in_three_months = clock.now() + timedelta(days=92)
        conn.execute(f"INSERT INTO {LOG} (request_id, integration_type, is_success, created_at) "
                     "VALUES ('future', 'PRODUCT_CHANGE', true, %s)", (in_three_months,))
        conn.execute(f"DELETE FROM {LOG} WHERE request_id = 'future'")
    report = Path(done["report"]).read_text()
    assert expired[0] in report and "## Done" in report

    code, again, _ = maintain(env, "--only", "partitions")
    assert code == 0 and again["partitions"]["created"] == [] and again["partitions"]["dropped"] == []


@pytest.mark.parametrize("point", ["maintenance:archiving", "maintenance:archived", "maintenance:detaching",
                                   "maintenance:detached", "maintenance:dropped"])
def test_a_run_killed_at_any_step_is_finished_by_the_next_with_nothing_lost(env, prefect_harness, point):
    k = 20 + ["maintenance:archiving", "maintenance:archived", "maintenance:detaching", "maintenance:detached",
              "maintenance:dropped"].index(point)
    name = past_name(k)
    with conn_of(env) as conn:
        add_past_month(conn, k)
        before = checksum(conn, name)
    killed_at(point, env)
    code, done, _ = maintain(env, "--only", "partitions")
    assert code == 0, done["problems"]
    assert name in done["partitions"]["dropped"]
    with conn_of(env) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{name}",)).fetchone()[0] is None
        record = conn.execute("SELECT state, rows, archive FROM pcdb.partition_archive WHERE partition = %s",
                              (name,)).fetchone()
    assert record[0] == "dropped" and record[1] == ROWS
    assert restore_checksum(env, record[2], name) == before


def test_a_killed_maintenance_leaves_no_lock_the_next_maintenance_waits_on(env, prefect_harness, caplog):
    """`pcdb maintain` SIGKILLed while it holds the environment's slot (its run stays Running on
    the server, its pid is gone): the next maintenance frees the slot on its first look, says so,
    and finishes, with no `pcdb unlock`. It once waited silently for the whole 30 minutes."""
    from prefect.settings import PREFECT_API_URL

    from flows.exclusion import holder

    name = past_name(35)
    with conn_of(env) as conn:
        add_past_month(conn, 35)
    killed = subprocess.run([sys.executable, "-m", "cli", "maintain", "--env", str(env.env_path), "--only",
                             "partitions"], capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "PCDB_CRASH_AT": "maintenance:archiving",
                                 "PREFECT_API_URL": PREFECT_API_URL.value()})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    dead = holder("test")
    assert dead is not None and dead["what"] == "maintenance"        # the dead run's record is still there
    caplog.set_level("INFO", logger="pcdb.exclusion")
    code, done, _ = maintain(env, "--only", "partitions")
    assert code == 0, done["problems"]
    assert name in done["partitions"]["dropped"]                      # and the killed run's work is finished
    assert f"freeing the slot of test after 1 look(s): maintenance run {dead['run_id']}" in caplog.text
    assert "is gone" in caplog.text
    assert holder("test") is None


def test_a_month_archived_recreated_with_other_rows_and_archived_again_leaves_two_archives(env, prefect_harness):
    """Archives are write-once: the second life of a partition name is archived beside the first,
    never over it, and each archive restores its own rows."""
    k, name = 40, past_name(40)
    with conn_of(env) as conn:
        add_past_month(conn, k)
        first = checksum(conn, name)
    code, done, _ = maintain(env, "--only", "partitions")
    assert code == 0 and name in done["partitions"]["dropped"], done["problems"]
    with conn_of(env) as conn:                      # the same month again, with other rows
        add_past_month(conn, k)
        conn.execute(f"UPDATE {SCHEMA}.{name} SET request_id = 'other-' || request_id, response_time_ms = 7")
        second = checksum(conn, name)
    assert second != first
    code, again, _ = maintain(env, "--only", "partitions")
    assert code == 0 and name in again["partitions"]["dropped"], again["problems"]
    (entry,) = [a for a in again["partitions"]["archived"] if a["name"] == name]
    assert entry["verified"] and entry["generation"] == 2
    with conn_of(env) as conn:
        records = conn.execute("SELECT generation, state, archive FROM pcdb.partition_archive WHERE partition = %s "
                               "ORDER BY generation", (name,)).fetchall()
    assert [(g, s) for g, s, _ in records] == [(1, "dropped"), (2, "dropped")]
    archives = [a for _, _, a in records]
    assert archives[0] != archives[1] and all(Path(a).is_file() for a in archives)
    assert oct(Path(archives[0]).stat().st_mode & 0o777) == "0o400"
    assert oct(Path(archives[0]).parent.stat().st_mode & 0o777) == "0o700"
    assert set(read_as_nobody([Path(a) for a in archives]).values()) == {"PermissionError"}   # customer rows
    assert restore_checksum(env, archives[0], name) == first
    assert restore_checksum(env, archives[1], name) == second


def test_a_detach_held_up_by_the_application_is_deferred_then_finalized(env, prefect_harness):
    name = past_name(30)
    with conn_of(env) as conn:
        add_past_month(conn, 30)
    blocker = conn_of(env)
    blocker.autocommit = False
    blocker.execute(f"SELECT count(*) FROM {LOG}")           # a long application transaction on the log
    try:
        code, done, _ = maintain(env, "--only", "partitions")
    finally:
        blocker.rollback()
        blocker.close()
    assert code == 0 and any(name in d and "FINALIZE" in d for d in done["deferred"]), done["deferred"]
    with conn_of(env) as conn:
        pending = conn.execute("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass",
                               (f"{SCHEMA}.{name}",)).fetchone()
    assert pending == (True,)                                 # left half-detached, as PostgreSQL does
    code, done, _ = maintain(env, "--only", "partitions")
    assert code == 0 and name in done["partitions"]["dropped"]


def test_an_archive_whose_checksum_does_not_match_stops_the_drop_and_alerts(env, prefect_harness):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    receiver = Receiver()
    CustomWebhookNotificationBlock(name="m", url=receiver.url, json_data={"subject": "{{subject}}", "text": "{{body}}"}
                                   ).save("pcdb-test-maintenance", overwrite=True)
    spec = Path(env.env_path)
    original = spec.read_text()
    spec.write_text(original + "notifications:\n  local_sink: false\n"
                    "  channels:\n    teams: {block: custom-webhook/pcdb-test-maintenance}\n")
    name = past_name(31)
    try:
        with conn_of(env) as conn:
            add_past_month(conn, 31)
        killed_at("maintenance:archived", env)                # archived, not proved yet
        with conn_of(env) as conn:
            archive = conn.execute("SELECT archive FROM pcdb.partition_archive WHERE partition = %s",
                                   (name,)).fetchone()[0]
        os.chmod(archive, 0o644)
        with open(archive, "r+b") as f:                       # one flipped byte in the stored archive
            f.seek(200)
            byte = f.read(1)
            f.seek(200)
            f.write(bytes([byte[0] ^ 0xFF]))
        code, done, _ = maintain(env, "--only", "partitions")
        assert code == 2 and any(name in p and "SHA-256" in p for p in done["problems"])
        assert name not in done["partitions"]["dropped"]
        with conn_of(env) as conn:
            assert checksum(conn, name)[0] == ROWS                # still there, still attached
        alert = receiver.wait_for(lambda b: "stopped" in json.dumps(b))
        assert name in json.dumps(alert)
    finally:
        spec.write_text(original)
        with conn_of(env) as conn:                            # leave the module's sandbox clean
            conn.execute(psycopg.sql.SQL("DROP TABLE {}").format(psycopg.sql.Identifier(SCHEMA, name)))
            conn.execute("DELETE FROM pcdb.partition_archive WHERE partition = %s", (name,))


def test_a_partition_whose_name_does_not_parse_is_reported_and_never_dropped(env, prefect_harness):
    with conn_of(env) as conn:
        add_past_month(conn, 40, name="kos_log_legacy_2023")
    try:
        code, done, _ = maintain(env, "--only", "partitions")
        assert code == 2 and any("kos_log_legacy_2023" in p and "does not parse" in p for p in done["problems"])
        with conn_of(env) as conn:
            assert checksum(conn, "kos_log_legacy_2023")[0] == ROWS
    finally:
        with conn_of(env) as conn:
            conn.execute(f"DROP TABLE {SCHEMA}.kos_log_legacy_2023")


def test_the_whole_run_under_an_application_writer_fails_not_one_insert_and_reports_every_step(env, prefect_harness):
    name = past_name(50)
    with conn_of(env) as conn:
        add_past_month(conn, 50)
        current = schema.partition_name(clock.now().astimezone(SEOUL).date())
        conn.execute(f"ALTER TABLE {SCHEMA}.{current} SET (autovacuum_enabled = false)")   # keep the churn visible
        conn.execute(f"INSERT INTO {LOG} (request_id, integration_type, is_success) "
                     "SELECT 'churn-' || g, 'PRODUCT_CHANGE', true FROM generate_series(1, 3000) g")
        conn.execute(f"DELETE FROM {LOG} WHERE request_id LIKE 'churn-%' AND right(request_id, 1) <> '0'")
        conn.execute(f"CREATE INDEX idx_breaker_by_state ON {SCHEMA}.pc_circuit_breaker_state (state)")
        try:   # a unique index over duplicates, built concurrently: it fails and leaves an invalid index
            conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY idx_breaker_dup ON {SCHEMA}.pc_circuit_breaker_state "
                         "(failure_count)")
        except psycopg.errors.UniqueViolation:
            pass
        conn.execute("CREATE ROLE intruder LOGIN")
        conn.execute(f"GRANT DELETE ON {SCHEMA}.pc_circuit_breaker_state TO product_change_readonly")
        for _ in range(5):
            conn.execute(f"SELECT count(*) FROM {SCHEMA}.pc_circuit_breaker_state WHERE state = 'OPEN'")
            conn.execute("SELECT pg_sleep(0.05)")             # slow enough to be in the top 10 by mean time
        # An index left bloated by a mass delete (VACUUM frees its pages for reuse, never gives them back).
        conn.execute(f"CREATE TABLE {SCHEMA}.bloat_probe (id bigint, v bigint)")
        conn.execute(f"CREATE INDEX bloat_probe_v ON {SCHEMA}.bloat_probe (v)")
        conn.execute(f"INSERT INTO {SCHEMA}.bloat_probe SELECT g, g FROM generate_series(1, 300000) g")
        conn.execute(f"DELETE FROM {SCHEMA}.bloat_probe WHERE id % 20 <> 0")
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.bloat_probe")
        bloated_bytes = conn.execute("SELECT pg_relation_size(%s::regclass)", (f"{SCHEMA}.bloat_probe_v",)).fetchone()[0]
    with pytest.raises(psycopg.OperationalError):                 # a failed login, for the account review
        psycopg.connect(env.endpoint().conninfo("product_change_app", "not-the-password")).close()

    stop, failures, inserted = threading.Event(), [], [0]

    def application() -> None:
        with conn_of(env) as app_conn:
            while not stop.is_set():
                try:
                    app_conn.execute(f"INSERT INTO {LOG} (request_id, integration_type, is_success) "
                                     "VALUES ('app', 'PRODUCT_CHANGE', true)")
                    inserted[0] += 1
                except psycopg.Error as exc:
                    failures.append(str(exc))

    writer = threading.Thread(target=application, daemon=True)
    writer.start()
    try:
        code, done, _ = maintain(env)
    finally:
        stop.set()
        writer.join(timeout=60)
    try:
        assert failures == [] and inserted[0] > 0
        assert code == 0, done["problems"]
        assert name in done["partitions"]["dropped"]
        assert f"{SCHEMA}.{current}" in done["statistics"]["analyzed"]
        assert f"{SCHEMA}.{current}" in done["statistics"]["vacuumed"]
        unused = {u["name"]: u for u in done["indexes"]["unused"]}
        assert unused[f"{SCHEMA}.idx_breaker_by_state"]["restore_sql"].startswith(
            "CREATE INDEX idx_breaker_by_state ON product_change.pc_circuit_breaker_state")
        assert not any("pkey" in n or "idx_kos_log" in n or "idx_pc_history" in n for n in unused)   # kept
        assert f"{SCHEMA}.idx_breaker_dup" in done["indexes"]["invalid"]
        assert "intruder" in done["accounts"]["unexpected_roles"]
        assert any("product_change_readonly" in d and "DELETE" in d for d in done["accounts"]["grant_drift"])
        assert set(done["accounts"]["password_age_days"]) == {"product_change_app", "product_change_readonly",
                                                              "product_change_admin"}
        assert all(0 <= days < 1 for days in done["accounts"]["password_age_days"].values())
        assert done["slow_queries"] and set(done["slow_queries"][0]) >= {"queryid", "calls", "total_ms", "mean_ms",
                                                                         "delta_total_ms"}
        assert done["hygiene"]["tls_certificate_days_left"] > 30 and done["hygiene"]["parameter_drift"] == {}
        assert done["accounts"]["failed_logins"] >= 1
        assert f"{SCHEMA}.bloat_probe_v" in done["indexes"]["reindexed"]
        with conn_of(env) as conn:
            rebuilt = conn.execute("SELECT pg_relation_size(%s::regclass)", (f"{SCHEMA}.bloat_probe_v",)).fetchone()[0]
        assert rebuilt < bloated_bytes / 4                        # REINDEX CONCURRENTLY gave the space back
        def sleeps(result: dict) -> int:
            return next(q["calls"] for q in result["slow_queries"] if "pg_sleep" in q["query"])

        assert sleeps(done) == 5                                   # no snapshot yet: all calls so far
        with conn_of(env) as conn:
            for _ in range(3):
                conn.execute("SELECT pg_sleep(0.05)")
        code, again, _ = maintain(env, "--only", "slow_queries")
        assert code == 0
        assert sleeps(again) == 3           # a delta against last run's snapshot: 3 since, not 8 in all
    finally:
        with conn_of(env) as conn:
            conn.execute("DROP ROLE intruder")
            conn.execute(f"REVOKE DELETE ON {SCHEMA}.pc_circuit_breaker_state FROM product_change_readonly")
            conn.execute(f"DROP INDEX {SCHEMA}.idx_breaker_by_state")
            conn.execute(f"DROP INDEX {SCHEMA}.idx_breaker_dup")
            conn.execute(f"DROP TABLE {SCHEMA}.bloat_probe")


def test_on_production_nothing_changes_until_an_approver_approves_the_plan(env, prefect_harness):
    from flows.maintenance import maintenance
    from flows.runbook import answer, pending_request
    from pcdb.decisions import Request
    from tests.conftest import Signers, paused_run_id, production_spec

    base = load_environment(env.env_path)
    signers = Signers([*base.approvers(), *base.team_members(list(base.operations.incident.teams))])
    spec = production_spec(Path(env.env_path), signers, "prod-maintenance")
    name = past_name(60)
    with conn_of(env) as conn:
        add_past_month(conn, 60)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("state", maintenance(
        spec_path=str(spec), only=["partitions"], return_state=True)))
    worker.start()
    run_id = paused_run_id()
    with conn_of(env) as conn:                                # paused on the plan: nothing archived yet
        assert checksum(conn, name)[0] == ROWS
        assert conn.execute("SELECT count(*) FROM pcdb.partition_archive WHERE partition = %s",
                            (name,)).fetchone()[0] == 0
    waiting = pending_request(run_id)
    message = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__}).message("최운영")
    verdict = answer(run_id, waiting, "최운영", message, signers.sign("최운영", message),
                     reason="monthly maintenance reviewed")
    assert verdict["result"] == "accepted", verdict
    worker.join(timeout=300)
    state = outcome["state"]
    assert state.is_completed(), state.message
    assert name in state.result()["partitions"]["dropped"]


def test_on_production_a_bloated_index_is_only_recommended_without_the_approval(env):
    with conn_of(env) as conn:
        conn.execute(f"CREATE TABLE {SCHEMA}.bloat_prod (id bigint, v bigint)")
        conn.execute(f"CREATE INDEX bloat_prod_v ON {SCHEMA}.bloat_prod (v)")
        conn.execute(f"INSERT INTO {SCHEMA}.bloat_prod SELECT g, g FROM generate_series(1, 300000) g")
        conn.execute(f"DELETE FROM {SCHEMA}.bloat_prod WHERE id % 20 <> 0")
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.bloat_prod")
        before = conn.execute("SELECT pg_relation_size(%s::regclass)", (f"{SCHEMA}.bloat_prod_v",)).fetchone()[0]
    try:
        ctx = RunbookContext(env.env, env)
        out = m.Outcome(dry_run=False)
        m.indexes(ctx, out, production=True, approved=False)
        assert f"{SCHEMA}.bloat_prod_v" in [b["name"] for b in out.indexes["bloated"]]
        assert out.indexes["reindexed"] == []
        assert any("bloat_prod_v" in r and "needs the maintenance approval" in r for r in out.recommended)
        with conn_of(env) as conn:                               # untouched
            assert conn.execute("SELECT pg_relation_size(%s::regclass)", (f"{SCHEMA}.bloat_prod_v",)).fetchone()[0] \
                == before
    finally:
        with conn_of(env) as conn:
            conn.execute(f"DROP TABLE {SCHEMA}.bloat_prod")
