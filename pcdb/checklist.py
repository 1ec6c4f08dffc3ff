"""The daily checklist of §8.1.1 (R-OPS-1), each item checked from data, not ticked.

Items: primary and standby state; replica lag < 1 min; the slow-query log; wait events;
connection use; cache hit; failed logins; privilege changes; unusual access. An item whose data
this target cannot read here (Azure's server log is in Log Analytics) is reported as such,
never as passed.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Protocol

from pcdb import clock, security
from pcdb.checks import CheckResult
from pcdb.context import RunbookContext
from pcdb.sql import query
from pcdb.steps import Steps
from pcdb.targets.base import Connection, Telemetry, Topology


class ChecklistTarget(Connection, Topology, Telemetry, Protocol):
    """The roles of the target port used by the daily checklist (pcdb.targets.base)."""


PORT = ChecklistTarget   # checked: tests/unit/test_port_roles.py

REQ = "§8.1.1"
SLOW_MS = 1000.0


def _item(name: str, passed: bool | None, evidence: str, started: float, **details) -> CheckResult:
    """passed None: the data is not readable on this target (shown N/A, never counted as passed)."""
    return CheckResult(name, REQ, bool(passed), evidence, details={"available": passed is not None, **details},
                       seconds=round(time.monotonic() - started, 3))


def pair_item(target: ChecklistTarget) -> CheckResult:
    """One running primary and a running synchronous standby, the HA state Healthy."""
    started = time.monotonic()
    state = target.server_state()
    roles = {n.name: f"{n.role}{'' if n.running else ' (DOWN)'}" for n in state.nodes}
    standby_ok = any(n.role == "standby" and n.running and (n.sync_state in (None, "sync", "quorum"))
                     for n in state.nodes)
    primary_ok = sum(1 for n in state.nodes if n.role == "primary" and n.running) == 1
    return _item("primary and standby", primary_ok and standby_ok and state.ha_state == "Healthy",
                 f"HA {state.ha_state}; " + ", ".join(f"{k} {v}" for k, v in roles.items()), started)


def failed_logins_item(target: ChecklistTarget, env, since: datetime) -> CheckResult:
    """Failed password logins in the last 24 h against the spec's bound (N/A where the platform
    keeps its log elsewhere)."""
    started = time.monotonic()
    failed = target.failed_logins(since)
    return _item("failed logins", None if failed is None else failed <= env.security.connection_policy.max_failed_attempts,
                 f"{failed} failed password login(s) in the last 24 h" if failed is not None
                 else "server log in Log Analytics (not read here)", started, failed=failed)


def run(ctx: RunbookContext, now: datetime | None = None, step: Steps | None = None) -> list[CheckResult]:
    """Every §8.1.1 item, each group a step (a task run in the flow)."""
    env, target = ctx.env, ctx.target
    step = step or Steps()
    now = now or clock.now()
    since = now - timedelta(days=1)
    out: list[CheckResult] = [step("primary and standby", lambda: pair_item(target), retry=True)]

    def database() -> tuple[list[CheckResult], set, set, list]:
        found: list[CheckResult] = []
        with ctx.connect() as conn:
            conn.execute("SET statement_timeout = '20s'")   # a probe never hangs the checklist
            started = time.monotonic()
            lags = conn.execute(query("checklist.sql", "replica_lags")).fetchall()
            worst = max((float(lag) for _, lag in lags), default=None)
            found.append(_item("replica lag < 1 min", worst is not None and worst < 60,
                             f"replica lag {worst:.1f} s" if worst is not None else "no replica is streaming", started))

            started = time.monotonic()
            has_pss = conn.execute(query("catalog.sql", "pg_stat_statements_installed")).fetchone()[0]
            slow = conn.execute(query("checklist.sql", "slowest_statements"), (SLOW_MS,)).fetchall() \
                if has_pss else []
            logged = target.log_lines(since, re.compile(r"duration: (\d{4,}|[1-9]\d{3})\.\d+ ms"))
            found.append(_item("slow-query log", None if not has_pss else True,
                             (f"{len(logged)} statement(s) over {SLOW_MS:.0f} ms in the server log today; "
                              if logged is not None else "server log in Log Analytics; ")
                             + (f"slowest: {'; '.join(f'{q} ({ms} ms)' for q, _, ms in slow)}" if slow else
                                "no statement has taken 1 s"), started, slow_statements=len(slow),
                             logged=len(logged) if logged is not None else None))

            started = time.monotonic()
            waits = conn.execute(query("checklist.sql", "active_waits")).fetchall()
            locks = sum(n for kind, _, n in waits if kind == "Lock")
            found.append(_item("wait events", locks == 0, "; ".join(f"{k}/{e} x{n}" for k, e, n in waits) or
                             "no active session is waiting", started, lock_waits=locks))

            started = time.monotonic()
            used, limit = conn.execute(query("checklist.sql", "connection_use")).fetchone()
            found.append(_item("connection use", used < 0.8 * limit, f"{used} of {limit} ({100 * used / limit:.0f} %)",
                             started))

            started = time.monotonic()
            day = _health_series(env, "cache_hit_percent", since)
            if day:   # the health runs' per-minute ratios over the last 24 h
                ratio, basis = sum(day) / len(day), f"average of {len(day)} health sample(s) in 24 h"
            else:
                hit, read = conn.execute(query("checklist.sql", "block_counters")).fetchone()
                ratio = 100.0 * float(hit) / float(hit + read) if hit is not None and (hit + read) else None
                basis = "since the statistics were reset (no health history)"
            found.append(_item("cache hit", ratio is None or ratio >= 90,
                             f"{ratio:.2f} %, {basis}" if ratio is not None else "no reads yet", started))

            started = time.monotonic()
            drift = security.grant_differences(conn, env.security.roles, env.service.database, env.service.schema_name)
            named = {r.name for r in env.security.roles} | {env.server.admin.user} | target.own_roles()
            strangers = [r for (r,) in conn.execute(query("checklist.sql", "logged_in_roles"))
                         if r not in named]
        return found, drift, named, strangers

    found, drift, named, strangers = step("the database's own view: replica lag, slow queries, waits, connections, "
                                          "cache hit, grants", database, retry=True)
    out += found
    out.append(step("failed logins", lambda: failed_logins_item(target, env, since), retry=True))

    def privilege_changes() -> CheckResult:
        started = time.monotonic()
        changes = target.log_lines(since, re.compile(r"\b(GRANT|REVOKE|ALTER ROLE|CREATE ROLE|DROP ROLE)\b", re.I))
        if changes is not None:   # pcdb's own runbooks (install Phase 5) grant what the spec says: not a change
            changes = [line for line in changes if "app=pcdb" not in line]
        return _item("privilege changes", not drift and not changes if changes is not None else not drift,
                         (f"{len(changes)} GRANT/REVOKE/role statement(s) logged in 24 h" if changes is not None
                          else "audit log in Log Analytics") + (f"; drift from §4.1.2: {', '.join(sorted(drift))}"
                                                                if drift else "; grants as §4.1.2"),
                         started, logged=changes[-5:] if changes else [], drift=sorted(drift))

    out.append(step("privilege changes", privilege_changes, retry=True))

    def unusual_access() -> CheckResult:
        started = time.monotonic()
        logins = target.log_lines(since, re.compile(r"connection authorized: user=(\S+)"))
        seen = {m.group(1) for line in logins or [] for m in [re.search(r"connection authorized: user=(\S+)", line)] if m}
        unusual = sorted((seen - named) | set(strangers))
        return _item("unusual access", not unusual, f"roles the spec does not name logged in: {', '.join(unusual)}"
                         if unusual else f"only the spec's roles logged in ({len(seen) or len(named)} role(s))", started,
                         roles=unusual)

    out.append(step("unusual access", unusual_access, retry=True))
    return out


def _health_series(env, metric: str, since: datetime) -> list[float]:
    from pcdb import health

    try:
        store = health.store_for(env)
    except OSError:
        return []
    try:
        return [v for _, v in store.series(metric, since)]
    finally:
        store.close()
