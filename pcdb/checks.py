"""Phase 7: every check is a real probe against the installed database; its result is evidence.

Each check returns a :class:`CheckResult`; a check never raises for a failed expectation (it
reports it), only for an error it cannot judge. Probes that write run in transactions that are
rolled back, and anything they create outside one (throw-away servers, probe tables) is removed
in ``finally``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg import sql as psql

from pcdb import clock
from pcdb.config import Environment
from pcdb.probe import ProbeWriter
from pcdb.sql import query
from pcdb.targets.base import Backups, Endpoint, Telemetry, Topology


class CheckTarget(Topology, Backups, Telemetry, Protocol):
    """The roles of the target port used by the install's Phase 7 checks (pcdb.targets.base)."""


PORT = CheckTarget   # checked: tests/unit/test_port_roles.py

Connect = Callable[..., psycopg.Connection]


@dataclass(frozen=True)
class CheckResult:
    name: str
    requirement: str
    passed: bool
    evidence: str
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict:
        return {"name": self.name, "requirement": self.requirement, "passed": self.passed,
                "evidence": self.evidence, "seconds": round(self.seconds, 3), "details": self.details}


def _q(name: str, schema: str) -> psql.Composed:
    return psql.SQL(query("verify.sql", name)).format(schema=psql.Identifier(schema))


def _timed(func: Callable[[], CheckResult]) -> CheckResult:
    started = time.monotonic()
    result = func()
    return CheckResult(result.name, result.requirement, result.passed, result.evidence, result.details,
                       time.monotonic() - started)


def check_connection(conn: psycopg.Connection, env: Environment) -> CheckResult:
    """§10.1.1 (1) and R-SEC-4: the connection works and uses TLS at the required version."""
    ssl, version, cipher = conn.execute(query("verify.sql", "tls_of_this_session")).fetchone()
    server = conn.execute("SHOW server_version").fetchone()[0]
    wanted = env.security.tls.min_version
    ok = bool(ssl) and version == wanted
    return CheckResult("connection and TLS", "R-SEC-4", ok,
                       f"connected to PostgreSQL {server}; TLS {version} ({cipher}); required {wanted}",
                       {"server_version": server, "tls_version": version, "cipher": cipher})


PROBE_USER = "pcdb_tls_probe"   # a role no server has: the probe carries no real credential


def server_checks(conn: psycopg.Connection, env: Environment) -> list[CheckResult]:
    """Phase 7's checks of one server over one connection: TLS, the schema's objects, the sample
    inserts and their index, pg_stat_statements (the install's, and the upgrade rehearsal's copy)."""
    return [check_connection(conn, env), *check_schema_objects(conn, env),
            check_sample_inserts_use_index(conn, env), check_pg_stat_statements(conn)]


def check_non_tls_refused(endpoint: Endpoint) -> CheckResult:
    """R-SEC-4: a connection without TLS is refused (tried for real, with no real credential).

    The probe connects as a role that does not exist, with no password. Over TLS, a server that
    answers asks for a password (libpq's PQconnectionNeedsPassword): it is reachable. Without
    TLS, a server that refuses plain connections ends them before any authentication (pg_hba.conf
    rejects them, or Azure's require_secure_transport); one that would accept them asks for a
    password again. Neither attempt sends a credential, and neither is judged by its message."""
    def attempt(sslmode: str):
        info = psycopg.conninfo.make_conninfo(
            host=endpoint.host, port=endpoint.port, dbname=endpoint.dbname, user=PROBE_USER, sslmode=sslmode,
            connect_timeout=10, application_name="pcdb-tls-probe", sslrootcert=endpoint.sslrootcert or None)
        conn = psycopg.pq.PGconn.connect(info.encode())
        try:
            ok = conn.status == psycopg.pq.ConnStatus.OK
            return ok, conn.needs_password, conn.error_message.decode(errors="replace").strip().splitlines()[-1:]
        finally:
            conn.finish()

    _, reachable, why = attempt("require" if endpoint.sslmode == "require" else endpoint.sslmode)
    if not reachable:
        return CheckResult("non-TLS connection refused", "R-SEC-4", False,
                           f"the server could not be reached over TLS to compare: {' '.join(why)}")
    accepted, asked, why = attempt("disable")
    if accepted or asked:
        return CheckResult("non-TLS connection refused", "R-SEC-4", False,
                           "a connection without TLS was " + ("accepted" if accepted else "taken to authentication"))
    return CheckResult("non-TLS connection refused", "R-SEC-4", True,
                       f"refused before authentication: {' '.join(why)}")


def check_schema_objects(conn: psycopg.Connection, env: Environment) -> list[CheckResult]:
    """§10.1.1 (2)-(5): schema, tables, the R-IDX-1 indexes and the circuit-breaker rows."""
    schema = env.service.schema_name
    results = []
    present = conn.execute(query("verify.sql", "schema_present"), {"schema": schema}).fetchone()
    results.append(CheckResult("schema exists", "R-SYS-1", present is not None, f"schema {schema}: "
                               + ("present" if present else "missing")))
    tables = [r[0] for r in conn.execute(query("verify.sql", "tables_present"), {"schema": schema})]
    wanted_tables = {"pc_product_change_history", "pc_kos_integration_log", "pc_circuit_breaker_state"}
    results.append(CheckResult("tables exist", "§10.1.1", wanted_tables <= set(tables),
                               f"{len(tables)} tables incl. partitions; missing: "
                               f"{sorted(wanted_tables - set(tables)) or 'none'}", {"tables": tables}))
    indexes = {r[0]: r[1] for r in conn.execute(query("verify.sql", "indexes_present"), {"schema": schema})}
    missing = [(t, i) for t, names in env.indexes.items() for i in names if indexes.get(i) != t]
    results.append(CheckResult("indexes exist with the document's names", "R-IDX-1", not missing,
                               f"{sum(len(v) for v in env.indexes.values())} expected; missing: {missing or 'none'}",
                               {"indexes": indexes}))
    breakers = conn.execute(_q("circuit_breakers", schema)).fetchall()
    results.append(CheckResult("circuit-breaker rows", "§10.1.1", bool(breakers),
                               ", ".join(f"{s}={st}" for s, st in breakers) or "no rows",
                               {"rows": [list(b) for b in breakers]}))
    return results


def check_sample_inserts_use_index(conn: psycopg.Connection, env: Environment, filler_rows: int = 2000) -> CheckResult:
    """§10.1.2: the sample inserts work and EXPLAIN shows the line-number index used.

    The samples and filler rows are inserted in a transaction that is rolled back (statistics
    included), so nothing stays. The filler is there so that the planner has a table to choose an
    index for: on PostgreSQL 15 it picks a sequential scan with no filler, a bitmap scan up to
    about 200 rows and the index scan from about 500. 2,000 rows keep a fourfold margin and cost
    about 40 ms; the 20,000 rows used before cost about 0.35 s of every install's Phase 7.
    """
    schema = env.service.schema_name
    index = env.indexes["pc_product_change_history"][0]
    with conn.transaction(force_rollback=True):
        inserted = conn.execute(_q("sample_inserts", schema)).rowcount
        conn.execute(_q("filler_rows", schema), {"rows": filler_rows})
        conn.execute(psql.SQL("ANALYZE {}.pc_product_change_history").format(psql.Identifier(schema)))
        plan = conn.execute(_q("explain_line_lookup", schema)).fetchone()[0]
    text = json.dumps(plan)
    used = f'"Index Name": "{index}"' in text
    node = plan[0]["Plan"]
    return CheckResult("sample inserts and index use", "§10.1.2", inserted == 3 and used,
                       f"{inserted} sample rows inserted; plan: {node['Node Type']}"
                       f"{' using ' + node.get('Index Name', '') if node.get('Index Name') else ''}; "
                       f"{'the intended index ' + index + ' is used' if used else index + ' NOT used'}; rolled back",
                       {"plan": plan})


def check_pg_stat_statements(conn: psycopg.Connection) -> CheckResult:
    """§10.1.2 (3): pg_stat_statements answers."""
    try:
        rows = conn.execute(query("verify.sql", "top_statements")).fetchall()
    except psycopg.Error as exc:
        return CheckResult("pg_stat_statements readable", "R-PAR-1", False, f"error: {exc}".splitlines()[0])
    return CheckResult("pg_stat_statements readable", "R-PAR-1", True, f"{len(rows)} top statements read",
                       {"top": [[r[0][:120], r[1], round(r[2], 3)] for r in rows]})


# One statement per privilege, each run in a transaction that is rolled back and none of them reading
# a column: INSERT with default values (a constraint error after the privilege check counts as
# allowed), UPDATE ... SET <first column> = DEFAULT WHERE false, DELETE ... WHERE false, SELECT ...
# LIMIT 0. TRUNCATE is asked of the catalog (running it would take an ACCESS EXCLUSIVE lock on a
# production table); so is a sequence's USAGE (nextval is not rolled back).
_TABLE_PROBES = {
    "SELECT": "SELECT 1 FROM {table} LIMIT 0",
    "INSERT": "INSERT INTO {table} DEFAULT VALUES",
    "UPDATE": "UPDATE {table} SET {column} = DEFAULT WHERE false",
    "DELETE": "DELETE FROM {table} WHERE false",
}


def role_probes(conn: psycopg.Connection, role, schema: str, tables: list[str]) -> list[tuple[str, psql.Composable, bool]]:
    """(label, statement, allowed) for ``role``, derived from its §4.1.2 grants in the spec: every
    table privilege on every table of the schema, CREATE in the schema, TEMPORARY tables."""
    from pcdb import security

    wanted = security.desired_privileges(role.grants, tables, [])
    probes: list[tuple[str, psql.Composable, bool]] = []
    for table in tables:
        column = conn.execute(query("install.sql", "first_column"),
                              (schema, table)).fetchone()[0]
        target = psql.Identifier(schema, table)
        for privilege, text in _TABLE_PROBES.items():
            statement = psql.SQL(text).format(table=target, column=psql.Identifier(column))
            probes.append((f"{privilege} on {table}", statement, privilege in wanted[("table", table)]))
        probes.append((f"TRUNCATE on {table}", psql.SQL("SELECT pg_catalog.has_table_privilege({}, 'TRUNCATE')").format(
            psql.Literal(f"{schema}.{table}")), "TRUNCATE" in wanted[("table", table)]))
    probes.append((f"CREATE in schema {schema}", psql.SQL("CREATE TABLE {} (id int)").format(
        psql.Identifier(schema, "pcdb_probe_table")), "CREATE" in wanted[("schema", "")]))
    probes.append(("TEMPORARY tables", psql.SQL(query("install.sql", "create_temp_probe")),
                   "TEMPORARY" in wanted[("database", "")]))
    return probes


def _run_probe(conn: psycopg.Connection, statement: psql.Composable) -> bool:
    """Whether the role may: the statement ran (or failed after the privilege check), rolled back."""
    try:
        with conn.transaction(force_rollback=True):
            cur = conn.execute(statement)
            row = cur.fetchone() if cur.description else None
    except psycopg.errors.InsufficientPrivilege:
        return False
    except (psycopg.errors.IntegrityError, psycopg.errors.FeatureNotSupported):
        return True   # past the privilege check: a NOT NULL or foreign key said no, not the grants
    return row[0] if row is not None and isinstance(row[0], bool) else True


def check_role_privileges(connect_as: Connect, env: Environment) -> list[CheckResult]:
    """Each role does what §4.1.2 grants and is refused what it does not (every probe rolled back).

    The roles are probed at the same time, each over connections of its own: a role's probes are
    about sixty round trips and three logins, all waiting on the server (0.12 s for the three
    roles one after the other, 0.05 s together)."""
    roles = env.security.roles
    if not roles:
        return []
    with ThreadPoolExecutor(max_workers=len(roles), thread_name_prefix="pcdb-role-probes") as pool:
        return list(pool.map(lambda role: _role_privileges(connect_as, role, env.service.schema_name), roles))


def _role_privileges(connect_as: Connect, role, schema: str) -> CheckResult:
    from pcdb.config.checks import schema_tables

    outcomes = []
    with connect_as(role.name) as conn:
        present = {r[0] for r in conn.execute(query("install.sql", "schema_tables"), {"schema": schema})}
        tables = sorted(t for t in schema_tables() if t in present)
        for label, statement, allowed in role_probes(conn, role, schema, tables):
            outcomes.append({"statement": label, "expected": allowed, "allowed": _run_probe(conn, statement)})
        member_of = [r[0] for r in conn.execute(
            query("catalog.sql", "my_memberships"))]
        superuser = conn.execute(query("catalog.sql", "am_superuser")).fetchone()[0]
    for other in ("postgres", "template1"):  # the maintenance databases are the admin's only
        try:
            with connect_as(role.name, dbname=other):
                got = True
        except psycopg.OperationalError:
            got = False
        outcomes.append({"statement": f"connect to database {other}", "expected": False, "allowed": got})
    wrong = [o for o in outcomes if o["expected"] != o["allowed"]]
    refused = sum(1 for o in outcomes if not o["allowed"])
    extra = ([f"member of {', '.join(member_of)} (the spec grants no membership)"] if member_of else []) + \
        (["SUPERUSER"] if superuser else [])
    return CheckResult(f"privileges of {role.name}", "R-SEC-2", not wrong and not extra,
                       f"{len(outcomes)} probes: {len(outcomes) - refused} allowed, {refused} refused "
                       f"as §4.1.2 says; no membership" if not wrong and not extra
                       else f"unexpected: {'; '.join(extra)} {wrong or ''}".strip(),
                       {"probes": outcomes, "member_of": member_of, "superuser": superuser})


def check_role_inventory(conn: psycopg.Connection, env: Environment, platform_roles: set[str]) -> CheckResult:
    """No role beyond the spec, no superuser but the admin, no membership the spec does not give
    (predefined pg_* roles included: pg_execute_server_program is a way to superuser)."""
    from pcdb import security

    started = time.monotonic()
    found = security.role_inventory(conn, env.security.roles, env.server.admin.user, platform_roles)
    evidence = ("only the spec's roles, the admin and the platform's own; no superuser, no membership" if not found
                else "; ".join(f"{f.role}: {', '.join(f.problems)}" for f in found))
    return CheckResult("roles as the spec says", "R-SEC-1", not found, evidence,
                       {"findings": [{"role": f.role, "in_spec": f.in_spec, "problems": list(f.problems)} for f in found]},
                       seconds=time.monotonic() - started)


STORAGE_READ_ONLY_PERCENT = 95.0   # Azure: read-only at >= 95 % used (or < 5 GiB free)


def check_storage(conn: psycopg.Connection, env: Environment, target: Telemetry) -> CheckResult:
    """What the databases take, against the storage they have (the sandbox: its quota, standing
    for the spec's disk; Azure: the spec's size, or Azure Monitor's storage_percent when higher):
    below the read-only limit, with the §6.1.1 warning threshold named (R-SYS-2)."""
    used = int(conn.execute(query("install.sql", "database_bytes")).fetchone()[0])
    size = int(env.sandbox.storage_quota if env.target == "sandbox" and env.sandbox else env.server.storage.size)
    percent = 100.0 * used / size
    try:
        monitored = target.platform_metrics().get("storage_percent")
    except Exception:  # noqa: BLE001 - the platform's metrics down: the SQL figure stands
        monitored = None
    if monitored is not None and monitored > percent:
        percent = float(monitored)
    warning = next((t.value for t in env.monitoring.system_metrics if t.metric == "storage_percent"), 75.0)
    evidence = (f"{percent:.1f} % of {size} bytes used ({used} bytes in the databases); warning at {warning:g} %, "
                f"read-only at {STORAGE_READ_ONLY_PERCENT:g} %")
    return CheckResult("storage below the read-only limit", "R-SYS-2", percent < STORAGE_READ_ONLY_PERCENT, evidence,
                       {"used_bytes": used, "size_bytes": size, "percent": round(percent, 1)})


def check_parameters(differences: dict[str, dict[str, tuple[str, str]]]) -> CheckResult:
    """Every parameter read back from every node equals the spec (R-PAR-2)."""
    bad = {node: diff for node, diff in differences.items() if diff}
    return CheckResult("parameters read back equal the spec", "R-PAR-2", not bad,
                       "all nodes match" if not bad else f"differences: {bad}", {"differences": bad})




def check_failover(target: Topology, app_conninfo: str, env: Environment) -> CheckResult:
    """HA failover test (R-INS-2, R-DR-1): planned failover and back under a probe writer."""
    probe = ProbeWriter(app_conninfo, table="pcdb_verify_probe")
    timings = []
    try:
        probe.drop_table()  # a run killed halfway left its table: its rows would count as in doubt
    except psycopg.Error:
        pass
    try:
        probe.start()
        probe.wait_for_rows(20)
        for _ in range(2):  # there and back, so the original primary ends as primary
            timings.append(target.failover("planned"))
            probe.wait_for_rows(20)
        outcome = probe.stop()
        missing = probe.missing()
    finally:
        probe.stop()
        try:
            probe.drop_table()
        except psycopg.Error:
            pass
    rto = env.dr.zone_failure.rto.total_seconds()
    worst = max(t.total_seconds for t in timings)
    ok = not missing and worst <= rto
    return CheckResult("HA failover test", "R-DR-1", ok,
                       f"2 planned failovers; worst {worst:.2f}s (target {rto:.0f}s); "
                       f"{len(outcome.acknowledged)} acknowledged writes, {len(missing)} lost, "
                       f"{len(outcome.in_doubt)} in doubt; writer outage {outcome.outage_seconds or 0:.2f}s",
                       {"failovers": [t.as_dict() for t in timings], "lost": missing, "in_doubt": outcome.in_doubt})


def check_point_in_time_restore(target: Backups, conn: psycopg.Connection, admin: str, password: str,
                                name: str) -> CheckResult:
    """PITR test (R-INS-2, R-DR-3): restore to a marked moment on a throw-away server, always deleted."""
    marker = clock.now().strftime("pitr-%Y%m%dT%H%M%S%f")
    target.delete_server(name)  # a run killed halfway may have left its server and its markers
    if conn.execute(query("install.sql", "pitr_marker_exists")).fetchone()[0]:
        conn.execute(query("install.sql", "delete_old_pitr_markers"))
    started = time.monotonic()
    deleted = False
    try:
        with conn.transaction():
            conn.execute(query("install.sql", "create_pitr_marker"))
            conn.execute(query("install.sql", "insert_pitr_marker"), (marker,))
        target_time = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute(query("install.sql", "insert_pitr_marker"), (marker + "-after",))
        endpoint = target.restore_point_in_time(target_time, name)
        restore_seconds = time.monotonic() - started
        with psycopg.connect(endpoint.conninfo(admin, password)) as restored:
            found = [r[0] for r in restored.execute(
                query("install.sql", "pitr_markers"), (marker + "%",))]
    finally:
        deleted = target.delete_server(name).action in ("deleted", "unchanged")
        conn.execute(query("install.sql", "delete_pitr_markers"), (marker + "%",))
    ok = found == [marker] and deleted
    return CheckResult("point-in-time restore test", "R-DR-3", ok,
                       f"restored to {target_time.isoformat()} in {restore_seconds:.2f}s; marker "
                       f"{'present' if marker in found else 'MISSING'}, later row "
                       f"{'absent' if marker + '-after' not in found else 'PRESENT'}; throw-away server "
                       f"{'deleted' if deleted else 'NOT deleted'}",
                       {"restore_seconds": restore_seconds, "server_deleted": deleted})
