"""Checks across fields of a spec, against the machine, the SKU and the service schema.

Each field of a spec can be valid while the whole is not: a superuser reserve larger than the
connection limit, role limits that add up to more than the server allows, shared_buffers larger
than the SKU's memory, a grant on a table the schema does not have. PostgreSQL finds some of these
only when it restarts with them (and then a standby stays down); the others silently change what
the install does. So they are refused here, before anything runs, with the field and what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

from pcdb import clock, versions
from pcdb.errors import Problem
from pcdb.paths import project_root
from pcdb.process import machine_memory
from pcdb.sql import SQL_DIR
from pcdb.units import format_size

# Where a report may be written besides the project: folders people keep data in, never the system's.
REPORT_ROOTS = (Path("/var/lib/pcdb"), Path("/var/log/pcdb"), Path("/srv"), Path("/tmp"), Path("/var/tmp"))

# Azure Database for PostgreSQL flexible server compute: family letter -> (tier, GiB per vCore).
# Burstable sizes do not follow a ratio: listed one by one.
_FAMILIES = {"D": ("GeneralPurpose", 4), "E": ("MemoryOptimized", 8)}
_BURSTABLE = {"Standard_B1ms": (1, 2), "Standard_B2s": (2, 4), "Standard_B2ms": (2, 8), "Standard_B4ms": (4, 16),
              "Standard_B8ms": (8, 32), "Standard_B12ms": (12, 48), "Standard_B16ms": (16, 64),
              "Standard_B20ms": (20, 80)}
_SKU = re.compile(r"^Standard_([DE])(\d+)(s|ds|ads)_v([3-5])$")
_VCORES = (2, 4, 8, 16, 20, 32, 48, 64, 96)

Line = Callable[[str], tuple[str, int] | None]


def sku_shape(sku: str) -> tuple[str, int, int] | None:
    """(tier, vCores, memory GiB) of an Azure flexible-server SKU name; None when unknown."""
    if sku in _BURSTABLE:
        return ("Burstable", *_BURSTABLE[sku])
    match = _SKU.match(sku)
    if not match or int(match.group(2)) not in _VCORES:
        return None
    tier, ratio = _FAMILIES[match.group(1)]
    vcores = int(match.group(2))
    return tier, vcores, vcores * ratio


@cache
def schema_tables() -> frozenset[str]:
    """The tables the service schema's migrations create."""
    names = set()
    for path in sorted((SQL_DIR / "migrations").glob("*.sql")):
        names |= {m.lower() for m in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_][a-z0-9_]*)\s*\(",
                                                path.read_text(), re.IGNORECASE)}
    return frozenset(names)


def problems(env, line: Line) -> list[Problem]:  # env: pcdb.config.Environment (the loader calls this)
    """Every cross-field problem of ``env``; ``line(path)`` gives where a field is written."""
    out: list[Problem] = []

    def add(path: str, message: str) -> None:
        out.append(Problem(path, message, line(path)))

    _compute(env, add)
    _connections_and_memory(env, add)
    _tables(env, add)
    _roles(env, add)
    _reports_dir(env, add)
    _sandbox(env, add)
    _production_tls(env, add)
    _decisions(env, add)
    _local_sink(env, add)
    _names(env, add)
    _network(env, add)
    return out


# Azure Database for PostgreSQL flexible server's platform metrics (Microsoft's "Monitoring and
# metrics" page), what an Azure metric alert may watch.
AZURE_METRICS = frozenset({
    "active_connections", "backup_storage_used", "connections_failed", "connections_succeeded", "cpu_credits_consumed",
    "cpu_credits_remaining", "cpu_percent", "database_size_bytes", "deadlocks", "disk_bandwidth_consumed_percentage",
    "disk_iops_consumed_percentage", "disk_queue_depth", "iops", "is_db_alive", "logical_replication_delay_in_bytes",
    "longest_query_time_sec", "longest_transaction_time_sec", "max_connections", "maximum_used_transactionIDs",
    "memory_percent", "network_bytes_egress", "network_bytes_ingress", "oldest_backend_time_sec",
    "oldest_backend_xmin_age", "physical_replication_delay_in_bytes", "physical_replication_delay_in_seconds",
    "read_iops", "read_throughput", "sessions_by_state", "storage_free", "storage_percent", "storage_used", "tps",
    "txlogs_storage_used", "write_iops", "write_throughput", "xact_commit", "xact_rollback"})


def _names(env, add) -> None:
    """Every name refers to something that exists or that pcdb makes: a rule watches a metric the
    health run measures, an Azure alert a metric Azure has, an auto-opened incident a rule."""
    from pcdb.rules import ALIASES, BUSINESS, MEASURED, catalog

    m = env.monitoring

    def measured(metric: str) -> bool:
        return ALIASES.get(metric, metric) in MEASURED

    checks = [(f"monitoring.alert_rules.{i}.condition.metric", r.condition.metric) for i, r in enumerate(m.alert_rules)]
    checks += [(f"monitoring.system_metrics.{i}.metric", t.metric) for i, t in enumerate(m.system_metrics)]
    checks += [(f"monitoring.performance_targets.{i}.metric", p.metric) for i, p in enumerate(m.performance_targets)]
    checks += [(f"monitoring.health.extra_rules.{i}.metric", x.metric) for i, x in enumerate(m.health.extra_rules)]
    for path, metric in checks:
        if not measured(metric) and metric != "failover_event":
            add(path, f"{metric!r} is not a metric the health runbook measures, so the rule would never fire; "
                      f"known: {', '.join(sorted(MEASURED))}")
    for i, b in enumerate(m.business_metrics):
        if ALIASES.get(b.metric, b.metric) not in BUSINESS and b.probe is None:
            add(f"monitoring.business_metrics.{i}.metric", f"{b.metric!r} is not a business metric pcdb measures "
                                                           f"({', '.join(BUSINESS)}): give its own probe (one SELECT)")
    for i, a in enumerate(m.azure_metric_alerts):
        if a.metric not in AZURE_METRICS:
            add(f"monitoring.azure_metric_alerts.{i}.metric", f"{a.metric!r} is not a metric of Azure Database for "
                                                              "PostgreSQL flexible server: the alert would never fire")
    rules = {r.name for r in catalog(env)}
    for rule in env.operations.incident.auto_open:
        if rule not in rules:
            add(f"operations.incident.auto_open.{rule}", f"{rule!r} is not a health rule: no alert of it can open an "
                                                          "incident")
    if env.production and env.target == "azure" and env.replica.location == env.server.location:
        add("replica.location", f"{env.replica.location} is the primary's region: a region failure would take the "
                                "read replica too; put it in the DR region")
    if env.production and env.target == "azure" and env.azure and env.azure.evidence_archive is None:
        add("azure.evidence_archive", "production keeps its reports and the ledger's anchors in an immutable "
                                      "container: name the storage account and container")


def _network(env, add) -> None:
    """On production a network rule is never wider than the plan's intent: one application subnet
    (/24) inside the VNet, not the database's own subnet; a wider one needs a recorded override."""
    import ipaddress

    if not env.production:
        return
    net = env.network
    vnet = ipaddress.ip_network(net.vnet.address_prefix) if net.mode == "vnet" and net.vnet else None
    database = ipaddress.ip_network(net.subnet.address_prefix) if net.mode == "vnet" and net.subnet else None
    approvers = env.approvers()
    for i, rule in enumerate(net.allowed_subnets):
        cidr = ipaddress.ip_network(rule.cidr)
        path = f"network.allowed_subnets.{i}"
        if cidr.prefixlen == 0:
            add(f"{path}.cidr", f"{rule.cidr} lets every address in: never on production")
            continue
        if database is not None and cidr.overlaps(database):
            add(f"{path}.cidr", f"{rule.cidr} overlaps the database's own subnet {database}: an application subnet is "
                                "another one")
        wide = []
        if vnet is not None and not cidr.subnet_of(vnet):
            wide.append(f"it reaches beyond the VNet {vnet}")
        if cidr.prefixlen < 24:
            wide.append(f"it is wider than one application subnet (/{cidr.prefixlen}, the plan's are /24)")
        if not wide:
            continue
        if rule.wider is None:
            add(f"{path}.cidr", f"{rule.cidr}: {' and '.join(wide)}. Narrow it to the application's subnet, or keep "
                                "it with a recorded override (wider: {reason, approved_by: an approver})")
        elif rule.wider.approved_by not in approvers:
            add(f"{path}.wider.approved_by", f"{rule.wider.approved_by!r} is not an approver "
                                             f"({', '.join(approvers)})")


def warnings(env) -> list[str]:
    """What is valid but a DBA must know before relying on the spec (config check and plan print
    them; they never stop anything)."""
    out = []
    placeholders = [person for person, line in env.decisions.signers.items()
                    if "PLACEHOLDER" in (line.split(None, 2)[2:] or [""])[0]]
    if placeholders:
        out.append(f"decisions.signers: the keys of {', '.join(placeholders)} are placeholders whose private halves do "
                   "not exist: nobody can sign as them until their own public keys replace these "
                   "(ssh-keygen -t ed25519; the .pub line)")
    if env.production:
        support = versions.support(env.server.version, clock.now().date())
        if support.status != "standard":
            out.append(f"server.version: {support.sentence()}")
    return out


def _decisions(env, add) -> None:
    """Every decider has a key when decisions must be signed; no key decides nothing; every team
    a step names exists."""
    policy = env.decisions
    if env.production and policy.unsigned == "allowed":
        add("decisions.unsigned", "allowed on production: a typed name would be taken for a decision; production "
                                  "accepts only signed decisions. Remove it (the default is refused)")
    teams = env.operations.incident.teams
    for i, step in enumerate(env.dr.region_failover_steps):
        named = env.confirming_teams(step)
        unknown = [t for t in named if t not in teams]
        if unknown and (teams or step.teams is not None):
            where = f"dr.region_failover_steps.{i}." + ("teams" if step.teams is not None else "owner")
            add(where, f"{', '.join(map(repr, unknown))}: not a team of operations.incident.teams "
                       f"({', '.join(teams) or 'none'}); name the teams whose members confirm '{step.step}' "
                       "(teams: [...])")
    deciders = {name: "install.approval.approvers" for name in env.approvers()}
    for team, members in teams.items():
        deciders.update({m: f"operations.incident.teams.{team}" for m in members})
    if policy.unsigned == "refused":
        for person, where in deciders.items():
            if person not in policy.signers:
                add(where, f"{person} decides here but has no key in decisions.signers: every decision of "
                           f"{env.name} must be signed; add their OpenSSH public key there")
    for person in policy.signers:
        if person not in deciders:
            add(f"decisions.signers.{person}", f"{person} has a key but decides nothing here (not an approver, not a "
                                               "member of an incident team): remove the key, or name them where "
                                               "they decide")


def _local_sink(env, add) -> None:
    """The local sink stands in for real channels on a sandbox, never on production, and it can
    only take over blocks it knows how to point (custom-webhook)."""
    if not env.notifications.local_sink:
        return
    if env.production:
        add("notifications.local_sink", "true on production: its alerts would go to a file on one machine instead "
                                        "of the people on call. Remove it and name the real channels' blocks")
    for name, channel in env.notifications.channels.items():
        if not channel.block.startswith("custom-webhook/"):
            add(f"notifications.channels.{name}.block", f"{channel.block}: with local_sink the channel's block is "
                                                        "pointed at the sink, which only a custom-webhook block can be; "
                                                        "use custom-webhook/<name>, or turn local_sink off")


def _production_tls(env, add) -> None:
    """Production never talks to its database without checking who answers, and its orchestrator's
    credentials come from where the cluster keeps them."""
    if not env.production:
        return
    for name in ("auth", "encryption_key"):
        if getattr(env.orchestrator, name).generate:
            add(f"orchestrator.{name}", "generate on production: the server, its worker and every flow-run job "
                                        "must share it; name where it is kept (env from a Kubernetes Secret, "
                                        "file, or key_vault)")
    tls = env.security.tls
    if not tls.verify_server_certificate:
        add("security.tls.verify_server_certificate",
            "false on production: pcdb would send the admin's password to whoever answers at the server's name. "
            "Keep it true (verify-full against Azure's root CAs, SCRAM bound to the TLS channel)")
    if not tls.require_secure_transport:
        add("security.tls.require_secure_transport", "false on production: the server would accept connections "
                                                      "without TLS (R-SEC-4). Keep it true")


def _compute(env, add) -> None:
    for section, sku, vcores, memory in (("server", env.server.sku, env.server.vcores, env.server.memory),
                                         ("replica", env.replica.sku, env.replica.vcores, env.replica.memory)):
        shape = sku_shape(sku)
        if shape is None:
            add(f"{section}.sku", f"{sku!r} is not an Azure flexible-server SKU this runbook knows (e.g. "
                                  "Standard_D4s_v3, Standard_E4ds_v5, Standard_B2s)")
            continue
        tier, cores, gib = shape
        if vcores != cores:
            add(f"{section}.vcores", f"{vcores}: {sku} has {cores} vCores")
        if memory != gib * 2**30:
            add(f"{section}.memory", f"{format_size(memory)}: {sku} has {gib}GB")
        if section == "server" and env.server.tier != tier:
            add("server.tier", f"{env.server.tier}: {sku} is a {tier} SKU")


def _setting(env, name: str) -> int | None:
    value = env.valid_parameters().get(name)
    try:
        return int(value.setting) if value is not None else None
    except ValueError:
        return None


def _connections_and_memory(env, add) -> None:
    max_connections = _setting(env, "max_connections") or 100
    reserved = _setting(env, "superuser_reserved_connections")
    reserved = 3 if reserved is None else reserved
    if reserved >= max_connections:
        add("parameters.superuser_reserved_connections",
            f"{reserved} reserved for superusers leaves nothing of max_connections {max_connections}; PostgreSQL "
            "would not start. Keep it well below max_connections")
    limits = {r.name: r.connection_limit for r in env.security.roles if r.connection_limit > 0}
    if sum(limits.values()) > max_connections - reserved:
        add("security.roles", f"the roles' connection limits add up to {sum(limits.values())} "
                              f"({', '.join(f'{k} {v}' for k, v in limits.items())}), more than max_connections "
                              f"{max_connections} less {reserved} reserved: lower a limit or raise max_connections")
    buffers = _setting(env, "shared_buffers")
    if buffers is None:
        return
    buffers *= 8192  # canonical unit: 8kB pages
    if buffers > env.server.memory:
        add("parameters.shared_buffers", f"{format_size(buffers)} is more than the server's memory "
                                         f"({format_size(env.server.memory)}, {env.server.sku}); about 25% of it "
                                         "is usual")
    if env.target == "sandbox":
        nodes, memory = 3, machine_memory()
        if nodes * buffers > memory:
            add("parameters.shared_buffers", f"{format_size(buffers)} on each of the sandbox's {nodes} servers is "
                                             f"more than this machine's memory ({format_size(memory)}); scale it "
                                             "down for the sandbox (local.yaml uses 128MB)")


def _tables(env, add) -> None:
    known = schema_tables()
    for table, indexes in env.indexes.items():
        if table not in known:
            add(f"indexes.{table}", f"the schema has no table {table!r}; its tables: {', '.join(sorted(known))}")
        if not indexes:
            add(f"indexes.{table}", "an empty list of indexes: name the indexes the install must find, or remove "
                                    "the table")
    for role in env.security.roles:
        for table in role.grants.tables:
            if table not in known:
                add(f"security.roles.{role.name}.grants.tables.{table}",
                    f"a grant on {table!r}, a table the schema does not have (its tables: {', '.join(sorted(known))}); "
                    "the install would revoke the role's real privileges")


def _roles(env, add) -> None:
    major = int(str(env.server.version).split(".")[0]) if str(env.server.version).split(".")[0].isdigit() else 0
    for role in env.security.roles:
        if "CREATEROLE" in role.attributes and major < 16:
            add(f"security.roles.{role.name}.attributes",
                f"CREATEROLE on PostgreSQL {env.server.version} lets {role.name} make itself a member of any role "
                "but a superuser, e.g. pg_execute_server_program (COPY ... TO PROGRAM as the server's OS user): a "
                "way to superuser. pcdb creates every role from the spec, so a DBA role does not need it: remove it")
        if role.name in (env.server.admin.user, "replicator", "postgres") or role.name.startswith(("pg_", "azure")):
            add(f"security.roles.{role.name}", f"{role.name!r} is reserved (the server's admin, replication, or a "
                                               "predefined role): give the role another name")


def _reports_dir(env, add) -> None:
    raw = Path(env.reports_dir)
    if ".." in raw.parts:
        add("reports_dir", f"{env.reports_dir!r} climbs out with '..'; give a folder inside the project "
                           f"(e.g. reports/{env.name}) or an absolute path under {', '.join(map(str, REPORT_ROOTS))}")
        return
    project = project_root()
    resolved = (project / raw).resolve() if not raw.is_absolute() else raw.resolve()
    home = Path.home().resolve()
    roots = [project.resolve(), *(r.resolve() for r in REPORT_ROOTS)] + ([home] if home != Path("/") else [])
    if not any(resolved == r or r in resolved.parents for r in roots) or resolved in (Path("/tmp"), home):
        add("reports_dir", f"{env.reports_dir!r} is outside the project; give a folder inside it "
                           f"(e.g. reports/{env.name}), or one under your home or {', '.join(map(str, REPORT_ROOTS))}")
    elif resolved.exists() and not resolved.is_dir():
        add("reports_dir", f"{env.reports_dir!r} is a file, not a folder")


def _sandbox(env, add) -> None:
    if env.sandbox is None:
        return
    ports = {k: v for k, v in env.sandbox.ports.items() if v}
    for name, port in ports.items():
        if port < 1024 and os.geteuid() != 0:
            add(f"sandbox.ports.{name}", f"{port} is a privileged port (below 1024); choose 1024-65535 or 0")
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            add(f"sandbox.ports.{name}", f"{port} is also {seen[port]}'s port; each server needs its own")
        seen[port] = name
    if env.sandbox.root is not None:
        root = Path(env.sandbox.root)
        if not root.is_absolute() or ".." in root.parts:
            add("sandbox.root", f"{env.sandbox.root!r}: give an absolute folder without '..'")
        elif root.resolve() in (Path("/"), Path("/tmp"), Path("/var"), Path("/home"), Path.home().resolve()):
            add("sandbox.root", f"{env.sandbox.root!r} is a shared system folder: give a folder of its own, "
                                "e.g. /var/lib/pcdb/<env>")
