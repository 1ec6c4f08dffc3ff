"""The sandbox mirrors production: sync HA standby, async replica, TLS 1.3 only, idempotent up."""

import json

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb.sandbox.engine import REPLICA

pytestmark = pytest.mark.postgres


def admin(target, which="primary", **overrides):
    endpoint = target.endpoint(which)
    info = endpoint.conninfo(target.admin, target.admin_password(), dbname="postgres")
    return psycopg.connect(info, autocommit=True, **overrides)


def test_primary_streams_synchronously_to_the_standby_and_asynchronously_to_the_replica(target):
    with admin(target) as conn:
        rows = dict(conn.execute("SELECT application_name, sync_state FROM pg_catalog.pg_stat_replication"))
    standby = target.sandbox.standby().name
    assert rows == {standby: "sync", REPLICA: "async"}


def test_connections_use_tls_13(target):
    with admin(target) as conn:
        version = conn.execute("SELECT version FROM pg_catalog.pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
    assert version == "TLSv1.3"


def test_a_connection_without_tls_is_refused(target):
    endpoint = target.endpoint()
    info = psycopg.conninfo.make_conninfo(host=endpoint.host, port=endpoint.port, dbname="postgres",
                                          user=target.admin, password=target.admin_password(),
                                          sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(info)


def test_a_client_capped_at_tls_12_is_refused(target):
    with pytest.raises(psycopg.OperationalError, match="protocol version|alert"):
        admin(target, ssl_max_protocol_version="TLSv1.2")


def test_a_wrong_password_is_refused(target):
    endpoint = target.endpoint()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(endpoint.conninfo(target.admin, "Wrong-Password-123!"))


def test_extensions_are_loaded(target):
    with admin(target) as conn:
        libs = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        available = {r[0] for r in conn.execute("SELECT name FROM pg_catalog.pg_available_extensions")}
    assert "pg_stat_statements" in libs and "amcheck" in available
    if target._installed("pgaudit"):
        assert "pgaudit" in libs


def test_parameters_of_the_spec_are_applied_on_every_node(target):
    change = target.ensure_parameters()
    assert change.action == "unchanged", change.diff
    for which in ("primary", "replica"):
        with admin(target, which) as conn:
            assert conn.execute("SHOW log_statement").fetchone()[0] == "all"
            assert conn.execute("SHOW ssl_min_protocol_version").fetchone()[0] == "TLSv1.3"
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "128MB"


def test_the_server_log_never_holds_a_password(target):
    import time

    from psycopg import sql as psql

    from pcdb.scram import verifier

    admin_user = target.admin
    with target.sandbox.primary().connect(admin_user) as conn:  # a password set the way pcdb sets one
        conn.execute(psql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
            psql.Identifier(admin_user), psql.Literal(verifier(target.admin_password()))))

    def logs() -> str:
        return "".join(p.read_text(errors="replace") for n in target.sandbox.nodes() for p in n.log_dir.glob("*"))
    deadline = time.monotonic() + 30
    while "ALTER ROLE" not in logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = logs()
    assert "ALTER ROLE" in logs  # the role statement was logged (log_statement = all) ...
    for secret in target.sandbox.secrets_dir.glob("*.password"):
        assert secret.read_text().strip() not in logs  # ... with a SCRAM verifier, never the password


def test_up_twice_changes_nothing(target):
    changes = [target.ensure_resource_group(), *target.ensure_server(), target.ensure_replica(),
               target.ensure_database(), target.ensure_parameters()]
    assert [c.action for c in changes] == ["unchanged"] * len(changes)


def test_access_rules_are_idempotent_and_allow_the_spec_subnets(target):
    target.ensure_access_rules()
    assert target.ensure_access_rules().action == "unchanged"
    hba = (target.sandbox.primary().data / "pg_hba.conf").read_text()
    assert "hostssl all          all         10.0.1.0/24" in hba
    assert "hostnossl all        all         0.0.0.0/0     reject" in hba


def test_status_json_describes_every_node(target):
    runner = CliRunner()
    result = runner.invoke(app, ["sandbox", "status", "--env", str(target.env_path), "--json"],
                           env={"PCDB_SANDBOX_ROOT": str(target.sandbox.root)})
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["database"] == "product_change_db"
    roles = {n["name"]: n for n in status["nodes"]}
    assert sorted(n["role"] for n in roles.values()) == ["primary", "replica", "standby"]
    for node in roles.values():
        assert set(node) >= {"name", "role", "host", "port", "socket_dir", "sync_state", "timeline", "lag_bytes"}
        assert node["host"] == "127.0.0.1" and isinstance(node["port"], int) and node["timeline"] >= 1
    assert roles[REPLICA]["sync_state"] == "async"
    assert next(n for n in roles.values() if n["role"] == "standby")["sync_state"] == "sync"


def test_metrics_sample(target):
    first = target.metrics()
    with admin(target) as conn:
        for _ in range(20):
            conn.execute("SELECT txid_current()")
    second = target.metrics()
    assert second.connections >= 0 and 0 < second.storage_percent < 100
    assert second.tps is not None and second.tps > 0
    assert second.cache_hit_percent is not None and second.deadlocks == first.deadlocks
    assert {r["name"] for r in second.replication} == {target.sandbox.standby().name, REPLICA}
