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

from pcdb.errors import Problem
from pcdb.paths import project_root
from pcdb.sandbox.procstats import machine_memory
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


def problems(env, line: Line) -> list[Problem]:  # env: pcdb.config.Environment (imported lazily there)
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
    return out


def _production_tls(env, add) -> None:
    """Production never talks to its database without checking who answers."""
    if not env.production:
        return
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
