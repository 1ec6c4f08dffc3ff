"""The installation schedule (REQUIREMENTS §6) as plain steps: the flows order them, Prefect
adds retries and evidence, and the benchmark calls the very same steps directly.

A step takes the :class:`RunbookContext` and returns the Changes it made (or check results).
Every step is idempotent: a second install reports every phase unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from psycopg import sql as psql

from pcdb import checks, clock, report, schema, security
from pcdb import secrets as pw
from pcdb.changes import Change
from pcdb.context import RunbookContext
from pcdb.errors import SecretError
from pcdb.preflight import Check
from pcdb.sql import query
from pcdb.targets.base import Connection, Provisioning, throwaway_name


class InstallTarget(Connection, Provisioning, Protocol):
    """The roles of the target port used by the install (pcdb.targets.base)."""


PORT = InstallTarget   # checked: tests/unit/test_port_roles.py

Step = Callable[[RunbookContext], list]


@dataclass(frozen=True)
class PhaseSpec:
    number: int
    title: str
    steps: tuple[tuple[str, Step], ...]


# -- Before Phase 1: secrets, and the whole plan -------------------------------------------

def secrets_preflight(ctx: RunbookContext) -> list[Change]:
    """Every secret the install needs, read from its source and checked against the password policy
    now, before Phase 1: a missing or weak one is a conflict here, not a failure in Phase 5. Generated
    sandbox passwords are strong by construction and made on first use (never by a dry run)."""
    env = ctx.env
    wanted = [(env.server.admin.user, env.server.admin.password, True)]
    wanted += [(r.name, r.password, True) for r in env.security.roles]
    if env.azure is not None:
        wanted += [("subscription", env.azure.subscription_id, False),
                   ("Teams webhook", env.azure.action_group.teams_webhook, False)]
    out = []
    for owner, ref, is_password in wanted:
        label = f"{ref.describe()} ({'role ' + owner if is_password else owner})"
        if ref.generate:
            out.append(Change("secret", owner, "unchanged", notes=("generated, kept in a file only its owner can "
                                                                   "read",)))
            continue
        try:
            value = ctx.secret(ref, owner)
            if is_password:
                pw.check_policy(label, value, env.security.password_policy.min_length)
        except SecretError as exc:
            out.append(Change("secret", owner, "conflict", notes=(str(exc),)))
            continue
        out.append(Change("secret", owner, "unchanged", notes=(f"{ref.describe()}: present"
                                                                + (", meets the password policy" if is_password else ""),)))
    return out


def preflight(ctx: RunbookContext) -> list[Check]:
    """Read only, before Phase 1 (and before the plan): the target's own checks (Azure: the
    subscription; sandbox: the server programs), then every secret the install needs, read from
    its source (Key Vault, Prefect, a file, the environment)."""
    found = list(ctx.target.preflight())
    secrets = secrets_preflight(ctx)
    bad = [c for c in secrets if c.action == "conflict"]
    if bad:
        found.append(Check("secrets", False, f"{len(bad)} of {len(secrets)} secret(s) missing or too weak: "
                           + " / ".join(c.notes[0] for c in bad),
                           "create each one where the spec says it is (a Key Vault secret, a Prefect Secret block, "
                           "a file only its owner reads, or an environment variable), meeting the password policy"))
    else:
        found.append(Check("secrets", True, f"all {len(secrets)} present: {', '.join(c.name for c in secrets)}"))
    return found


def refuse_bad_secrets(found: list[Change]) -> None:
    """Stop before Phase 1 when a secret is missing or weak, naming every one."""
    bad = [c for c in found if c.action == "conflict"]
    if bad:
        raise SecretError(f"{len(bad)} secret(s) missing or too weak, found before Phase 1; nothing was changed: "
                          + " / ".join(c.notes[0] for c in bad))


def database_plan(ctx: RunbookContext, target_plan: list[Change], secrets: list[Change]) -> list[Change]:
    """Read-only: what Phases 4-5 would change in the database (migrations, roles, grants, roles
    beyond the spec). Nothing to read yet when the server is still to be created."""
    env = ctx.env
    if any(c.resource in ("server", "database") and c.action == "created" for c in target_plan):
        return [Change("schema", env.service.schema_name, "created", notes=(f"{len(schema.migrations())} migration(s)",)),
                *(Change("role", r.name, "created", notes=(f"connection limit {r.connection_limit}, grants as §4.1.2",))
                  for r in env.security.roles)]
    usable = {c.name for c in secrets if c.action != "conflict"}
    out = []
    with ctx.connect() as conn:
        out.append(schema.migration_plan(conn, env.service.schema_name))
        for role in env.security.roles:
            ok = ctx.can_log_in(role.name, ctx.secret(role.password, role.name)) if role.name in usable else None
            out.append(security.role_plan(conn, role, ok))
        if conn.execute(query("catalog.sql", "schema_exists"),
                        (env.service.schema_name,)).fetchone()[0]:
            drift = security.grant_differences(conn, env.security.roles, env.service.database, env.service.schema_name)
            out.append(Change("grants", env.service.schema_name, "updated" if drift else "unchanged", diff=drift))
        for finding in security.role_inventory(conn, env.security.roles, env.server.admin.user,
                                               ctx.target.own_roles()):
            if finding.in_spec:
                continue
            out.append(Change("role", finding.role, "deleted" if ctx.remove_unknown_roles else "conflict",
                              notes=(f"{', '.join(finding.problems)}: "
                                     + ("dropped (--remove-unknown-roles)" if ctx.remove_unknown_roles else
                                        "reported; --remove-unknown-roles drops it"),)))
    return out


def full_plan(ctx: RunbookContext) -> list[Change]:
    """What the install would do, all of it, read-only: the target's resources, parameters with
    their values and access rules, then secrets, migrations, roles and grants."""
    target_plan = ctx.target.plan()
    secrets = secrets_preflight(ctx)
    return [*target_plan, *secrets, *database_plan(ctx, target_plan, secrets)]


# -- Phase steps ---------------------------------------------------------------------------

def resource_group(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_resource_group()]


def network(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_network()]


def server(ctx: RunbookContext) -> list[Change]:
    return ctx.target.ensure_server()


def database(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_database()]


def replica(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_replica()]


def server_parameters(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_parameters(set(ctx.env.parameters))]


def schema_migrations(ctx: RunbookContext) -> list[Change]:
    with ctx.connect() as conn:
        return [schema.ensure_schema(conn, ctx.env.service.schema_name)]


def log_partitions(ctx: RunbookContext) -> list[Change]:
    with ctx.connect() as conn:
        return [schema.ensure_log_partitions(conn, ctx.env.service.schema_name, ctx.env.service.timezone,
                                             ctx.env.service.log_partitions_ahead)]


def roles(ctx: RunbookContext) -> list[Change]:
    passwords = ctx.role_passwords()  # every secret resolved and checked before any role changes
    policy = ctx.env.security.password_policy
    with ctx.connect() as conn:
        return [security.ensure_role(conn, role, passwords[role.name], ctx.can_log_in, schema.LEDGER_SCHEMA,
                                     policy.expiry, policy.history)
                for role in ctx.env.security.roles]


def grants(ctx: RunbookContext) -> list[Change]:
    with ctx.connect() as conn:
        return [security.ensure_grants(conn, ctx.env.security.roles, ctx.env.service.database,
                                       ctx.env.service.schema_name)]


def other_roles(ctx: RunbookContext) -> list[Change]:
    """Roles the spec does not name, superusers, and memberships nobody granted through the spec:
    reported as conflicts, dropped only with the explicit --remove-unknown-roles."""
    env = ctx.env
    out = []
    with ctx.connect() as conn:
        found = security.role_inventory(conn, env.security.roles, env.server.admin.user, ctx.target.own_roles())
        for finding in found:
            if finding.in_spec:  # ensure_role has just corrected what it can: what is left, it could not
                out.append(Change("role", finding.role, "conflict", notes=(
                    f"{', '.join(finding.problems)}: the admin could not take it away; a superuser must",)))
            elif ctx.remove_unknown_roles:
                security.drop_role(conn, finding.role, env.server.admin.user,
                                   [env.service.database, "postgres"], lambda db: ctx.connect(dbname=db))
                out.append(Change("role", finding.role, "deleted", diff={"role": (", ".join(finding.problems), "-")},
                                  notes=(f"what it owned now belongs to {env.server.admin.user}",)))
            else:
                out.append(Change("role", finding.role, "conflict", notes=(
                    f"{', '.join(finding.problems)}: add it to security.roles, or drop it with "
                    "`pcdb install --remove-unknown-roles` (what it owns goes to the admin)",)))
    return out or [Change("roles", "beyond the spec", "unchanged", notes=("no other role, superuser or membership",))]


def tls(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_tls()]


def access_rules(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_access_rules()]


def audit_logging(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_parameters(set(ctx.env.security.audit))]


def statement_statistics(ctx: RunbookContext) -> list[Change]:
    with ctx.connect() as conn:
        present = conn.execute(query("catalog.sql", "pg_stat_statements_installed")).fetchone()[0]
        if present:
            return [Change("extension", "pg_stat_statements", "unchanged")]
        conn.execute(psql.SQL(query("install.sql", "create_pg_stat_statements")))
        return [Change("extension", "pg_stat_statements", "created")]


def alert_rules(ctx: RunbookContext) -> list[Change]:
    return [ctx.target.ensure_monitoring()]


DISRUPTIVE = ("HA failover test", "point-in-time restore test")


def verified_configuration(ctx: RunbookContext) -> str:
    """A fingerprint of what the disruptive checks verify: the server, its HA, replica, backups
    and parameters. A change to any of them makes the next install run them again."""
    env = ctx.env
    basis = {"target": env.target, "server": env.server.model_dump(mode="json", exclude={"admin"}),
             "replica": env.replica.model_dump(mode="json"), "backup": env.backup.model_dump(mode="json"),
             "parameters": {k: v.setting for k, v in sorted(env.desired_parameters().items())}}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def last_verification(ctx: RunbookContext, fingerprint: str, server: dict) -> dict | None:
    """The newest install in the run ledger whose disruptive checks ran and passed on this same
    configuration *and this same server* (its identity: a new, rebuilt or restored server runs
    its own checks, even with a ledger it carried over): {run_id, ended_at}; None when there is
    none (or the ledger cannot be read)."""
    from datetime import timedelta

    from pcdb import ledger

    try:
        with ctx.connect() as conn:
            found = ledger.rows(conn, schema.LEDGER_SCHEMA, clock.now() - timedelta(days=3650),
                                flow="install")
    except Exception:  # noqa: BLE001 - no ledger: nothing to rely on, the checks run
        return None
    for row in found:  # newest first
        figures = row.get("figures") or {}
        if figures.get("verified_configuration") == fingerprint and figures.get("verified_server") == server \
                and row.get("state") == "Completed":
            return {"run_id": row["run_id"], "ended_at": row["ended_at"]}
    return None


def _relied_on(name: str, requirement: str, earlier: dict, fingerprint: str, server: dict) -> checks.CheckResult:
    when = earlier["ended_at"].isoformat(timespec="minutes") if earlier["ended_at"] else "an earlier run"
    which = ", ".join(f"{k} {v}" for k, v in server.items())
    return checks.CheckResult(name, requirement, True,
                              f"not repeated: passed on {when} in install run {earlier['run_id']} on this same server "
                              f"({which}) and configuration ({fingerprint}); nothing was failed over or restored now. "
                              "`pcdb install --reverify` runs it again",
                              {"relied_on_run": earlier["run_id"], "configuration": fingerprint, "server": server})


def verification(ctx: RunbookContext) -> list[checks.CheckResult]:
    """Phase 7's checks, in the report's order. Each reads, or rolls back what it wrote, over
    connections of its own, so they run at the same time (0.26 s one after the other on an
    installed sandbox, mostly waiting on the server); the disruptive ones come after, alone."""
    env, target = ctx.env, ctx.target
    endpoint = target.endpoint("primary")
    passwords = ctx.role_passwords()
    ctx.admin_password()      # resolved once (a Key Vault read on Azure) before the checks share it

    @contextmanager
    def connect_as(role: str, dbname: str | None = None):
        with ctx.connect(role, passwords[role], dbname=dbname) as conn:
            yield conn

    def as_the_admin() -> list[checks.CheckResult]:
        with ctx.connect() as conn:
            return [*checks.server_checks(conn, env), checks.check_storage(conn, env, target)]

    def role_inventory() -> list[checks.CheckResult]:
        with ctx.connect() as conn:
            return [checks.check_role_inventory(conn, env, target.own_roles())]

    parts = [as_the_admin, lambda: [checks.check_non_tls_refused(endpoint)],
             lambda: checks.check_role_privileges(connect_as, env), role_inventory,
             lambda: [checks.check_parameters(target.parameter_differences())]]
    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="pcdb-phase-7") as pool:
        running = [pool.submit(part) for part in parts]
        results = [result for part in running for result in part.result()]
    return results + disruptive_checks(ctx)


def planned_failovers(results: list) -> dict | None:
    """The timelines Phase 7's HA failover test made on purpose (there and back), for the run's
    ledger row: the health rule that sees the timeline move after the install has ended reads
    them there, and does not page a failover for the install's own test (pcdb/health.py
    ``_planned_failover``). None when the test did not run (relied on an earlier run) or its target
    cannot read timelines (then the move is not explained, and fires)."""
    for result in results:
        if isinstance(result, checks.CheckResult) and result.name == "HA failover test":
            timelines = [f.get("timeline") for f in result.details.get("failovers", [])]
            if timelines and all(isinstance(t, int) for t in timelines):
                return {"check": "Phase 7's HA failover test", "timelines": timelines}
    return None


def disruptive_checks(ctx: RunbookContext) -> list[checks.CheckResult]:
    """Phase 7's failover and point-in-time restore checks, or the passed run they rely on."""
    env, target = ctx.env, ctx.target
    admin = env.server.admin.user
    results: list[checks.CheckResult] = []
    # The two disruptive checks (a failover and back: write outages; a restore: a new server) run on
    # the first install, on --reverify, and when the configuration they verified changed. A no-change
    # re-run relies on the last run that passed them, and says so: it is read-only.
    fingerprint = verified_configuration(ctx)
    server = target.server_identity()
    earlier = None if ctx.reverify else last_verification(ctx, fingerprint, server)
    if earlier is not None:
        results += [_relied_on("HA failover test", "R-DR-1", earlier, fingerprint, server),
                    _relied_on("point-in-time restore test", "R-DR-3", earlier, fingerprint, server)]
        return results
    app = target.endpoint("application").conninfo(admin, ctx.admin_password())
    results.append(checks.check_failover(target, app, env))
    with ctx.connect() as conn:
        results.append(checks.check_point_in_time_restore(target, conn, admin, ctx.admin_password(),
                                                          throwaway_name(env, "verify-pitr")))
    if all(r.passed for r in results[-2:]):
        ctx.verified_configuration = fingerprint
        ctx.verified_server = server
    return results


PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec(1, "Resource group", (("ensure resource group", resource_group),)),
    PhaseSpec(2, "Network", (("ensure network", network),)),
    PhaseSpec(3, "PostgreSQL server", (("ensure server (HA, backups)", server), ("ensure database", database),
                                      ("ensure read replica", replica), ("ensure server parameters", server_parameters))),
    PhaseSpec(4, "Schema and initial data", (("apply schema migrations", schema_migrations),
                                            ("ensure KOS-log partitions", log_partitions))),
    PhaseSpec(5, "Security", (("ensure roles", roles), ("ensure grants", grants),
                             ("reconcile roles beyond the spec", other_roles), ("ensure TLS", tls),
                             ("ensure network access rules", access_rules), ("ensure audit logging", audit_logging))),
    PhaseSpec(6, "Monitoring", (("ensure pg_stat_statements", statement_statistics),
                               ("register alert rules", alert_rules))),
    PhaseSpec(7, "Tests and verification", (("run verification checks", verification),)),
)
HANDOVER = PhaseSpec(8, "Documentation and handover", ())     # the report of the other seven


def handover_text(ctx: RunbookContext, results: dict[int, list], approval: dict | None, run_id: str,
                  titles: dict[int, str]) -> str:
    """Phase 8's handover report of an install's results, rendered (the caller writes it)."""
    with ctx.connect() as conn:
        expiry = security.password_expiry(conn, schema.LEDGER_SCHEMA)
    return report.render(ctx.env, run_id, {n: [i for i in items if isinstance(i, Change)] for n, items in results.items()},
                         [i for items in results.values() for i in items if isinstance(i, checks.CheckResult)],
                         {"primary": ctx.target.endpoint("primary"), "read replica": ctx.target.endpoint("replica")},
                         approval, titles, expiry)


def run_directly(ctx: RunbookContext, phases: list[int] | None = None) -> dict[int, list]:
    """Every step in order without Prefect (the benchmark's baseline)."""
    out: dict[int, list] = {}
    for phase in PHASES:
        if phases and phase.number not in phases:
            continue
        out[phase.number] = [item for _, step in phase.steps for item in step(ctx)]
    return out
