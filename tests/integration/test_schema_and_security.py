"""Phase 4 and 5 building blocks on a real server: migrations once, partitions ahead, grants both ways."""

import shutil
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from pcdb import checks, schema, security
from pcdb.errors import TargetError
from pcdb.sandbox import proc

pytestmark = pytest.mark.postgres


@pytest.fixture()
def conn(target):
    info = target.endpoint().conninfo(target.admin, target.admin_password())
    with psycopg.connect(info, autocommit=True) as c:
        yield c


def test_a_later_migration_is_applied_exactly_once_and_an_edited_one_is_refused(conn, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, folder)
    schema.ensure_schema(conn, "product_change", folder)
    (folder / "0002_add_channel.sql").write_text("ALTER TABLE pc_product_change_history ADD COLUMN channel text;\n")
    first = schema.ensure_schema(conn, "product_change", folder)
    assert first.action == "updated" and first.diff["migrations"][1] == ["0002_add_channel"]
    assert schema.ensure_schema(conn, "product_change", folder).action == "unchanged"
    (folder / "0002_add_channel.sql").write_text("ALTER TABLE pc_product_change_history ADD COLUMN chan text;\n")
    with pytest.raises(TargetError, match="0002_add_channel changed after it was applied"):
        schema.ensure_schema(conn, "product_change", folder)
    conn.execute("ALTER TABLE product_change.pc_product_change_history DROP COLUMN channel")
    conn.execute("DELETE FROM pcdb.pcdb_schema_migrations WHERE version = 2")


def test_monthly_partitions_are_kept_ready_ahead_in_the_business_time_zone(conn):
    schema.ensure_schema(conn, "product_change")
    # 2026-12-31 23:30 UTC is already January in Seoul.
    now = datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc)
    change = schema.ensure_log_partitions(conn, "product_change", "Asia/Seoul", 2, now=now)
    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'product_change.pc_kos_integration_log'::regclass ORDER BY 1")]
    assert {"pc_kos_integration_log_y2027m01", "pc_kos_integration_log_y2027m02",
            "pc_kos_integration_log_y2027m03"} <= set(names)
    assert change.action in ("created", "updated")
    assert schema.ensure_log_partitions(conn, "product_change", "Asia/Seoul", 2, now=now).action == "unchanged"
    conn.execute("INSERT INTO product_change.pc_kos_integration_log (request_id, integration_type, is_success, created_at)"
                 " VALUES ('r', 'T', true, '2027-01-01 00:30+09')")
    where = conn.execute("SELECT tableoid::regclass::text FROM product_change.pc_kos_integration_log "
                         "WHERE request_id = 'r'").fetchone()[0]
    assert where.endswith("pc_kos_integration_log_y2027m01")
    conn.execute("DELETE FROM product_change.pc_kos_integration_log WHERE request_id = 'r'")


def test_an_extra_privilege_granted_by_hand_is_revoked(conn, target):
    schema.ensure_schema(conn, "product_change")
    passwords = {r.name: target.sandbox.password(r.name) for r in target.env.security.roles}
    for role in target.env.security.roles:
        security.ensure_role(conn, role, passwords[role.name], lambda *_: True, "pcdb", timedelta(days=90))
    security.ensure_grants(conn, target.env.security.roles, "product_change_db", "product_change")
    conn.execute("GRANT DELETE ON product_change.pc_product_change_history TO product_change_app")
    change = security.ensure_grants(conn, target.env.security.roles, "product_change_db", "product_change")
    assert change.diff == {"product_change_app on table pc_product_change_history":
                           ("DELETE,INSERT,SELECT,UPDATE", "INSERT,SELECT,UPDATE")}
    assert security.ensure_grants(conn, target.env.security.roles, "product_change_db",
                                  "product_change").action == "unchanged"


def test_tables_created_later_follow_the_same_rules(conn, target):
    schema.ensure_schema(conn, "product_change")
    for role in target.env.security.roles:
        security.ensure_role(conn, role, target.sandbox.password(role.name), lambda *_: True, "pcdb", timedelta(days=90))
    security.ensure_grants(conn, target.env.security.roles, "product_change_db", "product_change")
    conn.execute("CREATE TABLE product_change.pc_later (id int)")
    try:
        readonly = target.endpoint().conninfo("product_change_readonly", target.sandbox.password("product_change_readonly"))
        app = target.endpoint().conninfo("product_change_app", target.sandbox.password("product_change_app"))
        with psycopg.connect(readonly) as c:
            assert c.execute("SELECT count(*) FROM product_change.pc_later").fetchone()[0] == 0
        with psycopg.connect(app) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT count(*) FROM product_change.pc_later")  # the app gets tables one by one
    finally:
        conn.execute("DROP TABLE product_change.pc_later")


def test_only_roles_the_spec_grants_connect_can_connect_to_the_service_database(conn, target):
    from pcdb.scram import verifier

    schema.ensure_schema(conn, "product_change")
    for role in target.env.security.roles:
        security.ensure_role(conn, role, target.sandbox.password(role.name), lambda *_: True, "pcdb", timedelta(days=90))
    security.ensure_grants(conn, target.env.security.roles, "product_change_db", "product_change")
    stranger_password = "Stranger-Test-Passw0rd!9"
    conn.execute(f"CREATE ROLE pcdb_stranger LOGIN PASSWORD '{verifier(stranger_password)}'")
    try:
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(target.endpoint().conninfo("pcdb_stranger", stranger_password)).close()
        readonly = target.endpoint().conninfo("product_change_readonly", target.sandbox.password("product_change_readonly"))
        with psycopg.connect(readonly) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        for role in ("product_change_app", "product_change_readonly", "replicator"):   # nor the maintenance databases
            for other in ("postgres", "template1"):
                with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                    psycopg.connect(target.endpoint().conninfo(role, target.sandbox.password(role), dbname=other)).close()
    finally:
        conn.execute("DROP ROLE pcdb_stranger")
    assert security.ensure_grants(conn, target.env.security.roles, "product_change_db",
                                  "product_change").action == "unchanged"


def test_a_runner_that_does_not_own_the_database_is_told_instead_of_updating_forever(conn, target):
    from pcdb.scram import verifier

    password = "Runner-Test-Passw0rd!8"
    conn.execute(f"CREATE ROLE pcdb_runner LOGIN PASSWORD '{verifier(password)}'")
    conn.execute("CREATE DATABASE pcdb_foreign")                      # owned by the admin, not the runner
    conn.execute("GRANT CONNECT ON DATABASE product_change_db TO pcdb_runner")
    try:
        with psycopg.connect(target.endpoint().conninfo("pcdb_runner", password), autocommit=True) as runner:
            with pytest.raises(TargetError, match="PUBLIC keeps CONNECT, TEMPORARY on database pcdb_foreign.*must own it"):
                security.ensure_grants(runner, [], "pcdb_foreign", "product_change")
    finally:
        conn.execute("DROP DATABASE pcdb_foreign")
        conn.execute("REVOKE CONNECT ON DATABASE product_change_db FROM pcdb_runner")
        conn.execute("DROP ROLE pcdb_runner")


def test_amcheck_over_sql_finds_a_healthy_database_clean(conn):
    from pcdb.amcheck import amcheck_sql

    schema.ensure_schema(conn, "product_change")
    for heapallindexed in (False, True):
        ok, detail = amcheck_sql(conn, heapallindexed)
        assert ok and detail.startswith("no corruption found")


def test_a_password_used_in_the_last_five_is_refused_and_the_role_keeps_its_current_one(target):
    from pcdb import security
    from pcdb.config import Role
    from pcdb.context import RunbookContext
    from pcdb.errors import SecretError
    from pcdb.schema import LEDGER_SCHEMA

    ctx = RunbookContext(target.env, target)
    role = Role.model_validate({"name": "pcdb_history_probe", "purpose": "test", "connection_limit": 2,
                                "password": {"env": "UNUSED"}, "grants": {"database": ["CONNECT"], "schema": ["USAGE"]}})
    passwords = [f"Rotation-{n}-Passw0rd!" for n in range(7)]
    with ctx.connect() as conn:
        security.ensure_role(conn, role, passwords[0], ctx.can_log_in, LEDGER_SCHEMA, timedelta(days=90), 5)
        conn.execute(f"GRANT CONNECT ON DATABASE {target.env.service.database} TO pcdb_history_probe")
        for password in passwords[1:6]:                                  # rotated 5 times
            security.ensure_role(conn, role, password, ctx.can_log_in, LEDGER_SCHEMA, timedelta(days=90), 5)
        with pytest.raises(SecretError, match="one of its last 5 passwords"):
            security.ensure_role(conn, role, passwords[2], ctx.can_log_in, LEDGER_SCHEMA, timedelta(days=90), 5)
        assert ctx.can_log_in(role.name, passwords[5])                   # unchanged by the refusal
        security.ensure_role(conn, role, passwords[0], ctx.can_log_in, LEDGER_SCHEMA, timedelta(days=90), 5)
        assert ctx.can_log_in(role.name, passwords[0])                   # six back: allowed again
        conn.execute(f"REVOKE CONNECT ON DATABASE {target.env.service.database} FROM pcdb_history_probe")
        conn.execute("DROP ROLE pcdb_history_probe")


def test_the_review_escalation_is_refused_and_what_a_superuser_grants_is_reported_and_undone(conn, target):
    """The review's way to superuser: product_change_admin joined pg_execute_server_program (PostgreSQL
    15's CREATEROLE allowed it), then COPY ... TO PROGRAM made a rogue superuser. Now the admin role has
    no CREATEROLE and inherits nothing, so the GRANT is refused; and what only a superuser could do
    (the membership, a role outside the spec that is a superuser) is found by Phase 7's check, taken
    back by Phase 5, and the rogue role is dropped only with the explicit flag."""
    from contextlib import contextmanager

    from pcdb import checks
    from pcdb.context import RunbookContext
    from pcdb.install import other_roles

    schema.ensure_schema(conn, "product_change")
    schema.ensure_log_partitions(conn, "product_change", "Asia/Seoul", 3)   # the probes insert into the log
    passwords = {r.name: target.sandbox.password(r.name) for r in target.env.security.roles}
    for role in target.env.security.roles:
        security.ensure_role(conn, role, passwords[role.name], lambda *_: True, "pcdb", timedelta(days=90))
    security.ensure_grants(conn, target.env.security.roles, "product_change_db", "product_change")
    admin = next(r for r in target.env.security.roles if r.name == "product_change_admin")
    as_admin = target.endpoint().conninfo(admin.name, passwords[admin.name])
    with psycopg.connect(as_admin, autocommit=True) as c:                  # the escalation, as the review did it
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("GRANT pg_execute_server_program TO product_change_admin")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    assert conn.execute("SELECT rolinherit, rolcreaterole FROM pg_roles WHERE rolname = %s",
                        (admin.name,)).fetchone() == (False, False)

    # What only a superuser can do (a stolen admin password, a DBA by hand): found and undone.
    conn.execute("GRANT pg_execute_server_program TO product_change_admin")
    conn.execute("CREATE ROLE pcdb_rogue SUPERUSER LOGIN")
    ctx = RunbookContext(target.env, target)

    @contextmanager
    def connect_as(name, dbname=None):
        with psycopg.connect(target.endpoint().conninfo(name, passwords[name], dbname=dbname), autocommit=True) as c:
            yield c
    try:
        found = {r.name: r for r in checks.check_role_privileges(connect_as, target.env)}
        assert not found["privileges of product_change_admin"].passed
        assert "member of pg_execute_server_program" in found["privileges of product_change_admin"].evidence
        inventory = checks.check_role_inventory(conn, target.env, target.own_roles())
        assert not inventory.passed
        assert "pcdb_rogue: not in the spec (can log in), SUPERUSER" in inventory.evidence
        assert "product_change_admin: member of pg_execute_server_program" in inventory.evidence

        change = security.ensure_role(conn, admin, passwords[admin.name], lambda *_: True, "pcdb", timedelta(days=90))
        assert change.diff["member of"] == ("pg_execute_server_program", "-")
        reported = {c.name: c for c in other_roles(ctx)}
        assert reported["pcdb_rogue"].action == "conflict" and "--remove-unknown-roles" in reported["pcdb_rogue"].notes[0]
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pcdb_rogue'").fetchone() == (1,)  # only reported

        ctx.remove_unknown_roles = True
        removed = {c.name: c for c in other_roles(ctx)}
        assert removed["pcdb_rogue"].action == "deleted"
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pcdb_rogue'").fetchone() is None
        assert checks.check_role_inventory(conn, target.env, target.own_roles()).passed
        again = {r.name: r for r in checks.check_role_privileges(connect_as, target.env)}
        assert all(r.passed for r in again.values()), again
        assert [c.action for c in other_roles(ctx)] == ["unchanged"]
    finally:
        conn.execute("DROP ROLE IF EXISTS pcdb_rogue")
        conn.execute("REVOKE pg_execute_server_program FROM product_change_admin")

def test_over_the_socket_only_the_admin_logs_in_and_only_from_the_os_users_pcdb_runs_as(target):
    """No more `trust` for everyone on the socket: the admin by peer, mapped from pcdb's own OS user
    and the servers' (its tools run as that one), and no other role at all."""
    from pcdb.errors import SandboxError
    from pcdb.sandbox.proc import invoking_user, server_user

    for node in target.sandbox.nodes():
        hba = (node.data / "pg_hba.conf").read_text()
        assert "trust" not in hba.split("# pcdb access rules begin")[0].split("\n", 2)[2]
        mapped = [line.split() for line in (node.data / "pg_ident.conf").read_text().splitlines()
                  if line and not line.startswith("#")]
        assert sorted({u for _, u, _ in mapped}) == sorted({invoking_user(), server_user().name})
        assert {role for _, _, role in mapped} == {target.admin}
        with pytest.raises(SandboxError, match="pg_hba.conf rejects connection"):
            node.connect("product_change_readonly").close()
        with node.connect(target.admin) as conn:                        # peer, as pcdb's own OS user
            assert conn.execute("SELECT current_user").fetchone() == (target.admin,)


def test_privilege_probes_come_from_the_specs_grants_so_a_new_role_is_probed_too(conn, target):
    """Phase 7's probes are derived from §4.1.2's grants in the spec, not from a list of known roles:
    a role added to the spec gets every table privilege probed, and a grant beyond the spec fails it."""
    from contextlib import contextmanager

    from pcdb import checks
    from pcdb.config import Role

    report = Role.model_validate({"name": "product_change_report", "purpose": "reports", "connection_limit": 2,
                                  "password": {"generate": True}, "grants": {
                                      "database": ["CONNECT"], "schema": ["USAGE"],
                                      "tables": {"pc_kos_integration_log": ["SELECT"]}}})
    env = target.env.model_copy(update={"security": target.env.security.model_copy(update={"roles": [report]})})
    schema.ensure_schema(conn, "product_change")
    schema.ensure_log_partitions(conn, "product_change", "Asia/Seoul", 3)
    for role in target.env.security.roles:
        security.ensure_role(conn, role, target.sandbox.password(role.name), lambda *_: True, "pcdb", timedelta(days=90))
    password = target.sandbox.password(report.name)
    security.ensure_role(conn, report, password, lambda *_: True, "pcdb", timedelta(days=90))
    security.ensure_grants(conn, [*target.env.security.roles, report], "product_change_db", "product_change")

    @contextmanager
    def connect_as(name, dbname=None):
        with psycopg.connect(target.endpoint().conninfo(name, password, dbname=dbname), autocommit=True) as c:
            yield c
    try:
        [result] = checks.check_role_privileges(connect_as, env)
        allowed = [p["statement"] for p in result.details["probes"] if p["allowed"]]
        assert result.passed and allowed == ["SELECT on pc_kos_integration_log"], result.evidence
        assert len(result.details["probes"]) == 3 * 5 + 2 + 2          # 3 tables x 5 privileges, CREATE, TEMP, 2 dbs
        conn.execute("GRANT INSERT ON product_change.pc_kos_integration_log TO product_change_report")
        [drifted] = checks.check_role_privileges(connect_as, env)
        assert not drifted.passed and "INSERT on pc_kos_integration_log" in drifted.evidence
    finally:
        conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA product_change FROM product_change_report")
        security.ensure_grants(conn, target.env.security.roles, "product_change_db", "product_change")
        conn.execute("DROP OWNED BY product_change_report")
        conn.execute("DROP ROLE product_change_report")


def test_a_server_presenting_a_certificate_for_another_name_is_refused(target):
    """verify-full checks the name too: a certificate the sandbox's own CA signed, for another
    name, is refused before any password is sent."""
    sandbox = target.sandbox
    replica = sandbox.node("replica")
    cert, key = sandbox.tls_dir / "server.crt", sandbox.tls_dir / "server.key"
    kept = cert.read_bytes(), key.read_bytes()
    try:
        sandbox.issue_certificate(["DNS:other.example"], key, cert)
        proc.chown_tree(sandbox.tls_dir)
        with replica.connect(target.admin) as conn:
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while True:                      # the reload is asynchronous: wait until it serves the new one
            try:
                psycopg.connect(target.endpoint("replica").conninfo(target.admin, target.admin_password())).close()
            except psycopg.OperationalError as exc:
                assert 'server certificate for "other.example"' in str(exc) and 'does not match host name "127.0.0.1"' in str(exc)
                break
            assert time.monotonic() < deadline, "the replica still presents its own certificate"
            time.sleep(0.1)
    finally:
        cert.write_bytes(kept[0])
        key.write_bytes(kept[1])
        proc.chown_tree(sandbox.tls_dir)
        with replica.connect(target.admin) as conn:
            conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(target.endpoint("replica").conninfo(target.admin, target.admin_password())).close()
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_the_non_tls_probe_fails_when_plain_connections_reach_authentication(target):
    """R-SEC-4's probe sends no credential, and it is not fooled: a pg_hba line that lets plain
    TCP through to SCRAM makes it fail."""
    replica = target.sandbox.node("replica")
    assert checks.check_non_tls_refused(target.endpoint("replica")).passed
    hba = replica.data / "pg_hba.conf"
    kept = hba.read_text()
    try:
        hba.write_text("host all all 127.0.0.1/32 scram-sha-256\n" + kept)
        with replica.connect(target.admin) as conn:
            conn.execute("SELECT pg_reload_conf()")       # asynchronous: the check below polls
        deadline = time.monotonic() + 30
        while (result := checks.check_non_tls_refused(target.endpoint("replica"))).passed:
            assert time.monotonic() < deadline, "the reload did not take the plain-TCP line"
            time.sleep(0.1)
        assert "taken to authentication" in result.evidence
    finally:
        hba.write_text(kept)
        with replica.connect(target.admin) as conn:
            conn.execute("SELECT pg_reload_conf()")


def test_the_sample_insert_check_sees_the_line_number_index_chosen_and_fails_without_it(conn, target):
    """§10.1.2: the planner picks the line-number index for the document's lookup once the filler
    rows are in, the samples and the filler are rolled back, and without the index the check fails."""
    schema.ensure_schema(conn, "product_change")
    table = "product_change.pc_product_change_history"
    before = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    index = target.env.indexes["pc_product_change_history"][0]

    result = checks.check_sample_inserts_use_index(conn, target.env)
    assert result.passed, result.evidence
    assert f"Index Scan using {index}" in result.evidence
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == before

    with conn.transaction(force_rollback=True):
        conn.execute(f"DROP INDEX product_change.{index}")
        without = checks.check_sample_inserts_use_index(conn, target.env)
    assert not without.passed and f"{index} NOT used" in without.evidence
    assert conn.execute("SELECT to_regclass(%s)", (f"product_change.{index}",)).fetchone()[0] is not None
