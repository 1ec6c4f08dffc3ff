"""Health monitoring (§6, R-MON-1..5): every rule of the plan, and what the best monitors add,
evaluated from one sample, with alert state that outlives the watched server.

The rule catalog is built from the spec: §6.2.2's alert rules (with their durations and
channels), §6.1's system thresholds, performance alarms and business thresholds, and
``monitoring.health.extra_rules``. A sample is the platform's metrics (Azure Monitor; the sandbox
has none for CPU, memory and IOPS) plus SQL probes of the primary. Rates (TPS, deadlocks per
hour, average query time, slow-query share) are differences of counters kept between runs.

The state lives on the orchestrator's side, in ``<orchestrator home>/health/<env>.sqlite``: a
primary that cannot be reached still fires "database connection failure". A rule goes pending
-> firing once its condition has held for its duration, and resolves once the value is back
past the threshold by ``hysteresis_percent``. Each transition is notified once on the rule's
channels; a firing alert is reminded every ``reminder_every``; a silence holds notifications
back until it expires; while pcdb's own drill or maintenance holds the environment, alerts are
annotated with it (never dropped). A timeline move that pcdb's own install made as its Phase 7
test, recorded in the run ledger, is said in the report instead of paged (``_planned_failover``);
one seen while such a run still holds the environment is held until it ends (``_held_move``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql as psql

from pcdb import clock, security, versions
from pcdb.config import Environment
from pcdb.context import RunbookContext
from pcdb.private import private_file
from pcdb.rules import ALIASES, BUSINESS, COUNTS, MEASURED, Rule, catalog  # noqa: F401 - health.catalog etc. are the runbook's words
from pcdb.sql import query
from pcdb.targets.base import SYNC_STANDBY_VISIBLE, Connection, Telemetry, Topology


class HealthTarget(Connection, Topology, Telemetry, Protocol):
    """The roles of the target port used by the health runbook (pcdb.targets.base)."""


PORT = HealthTarget   # checked: tests/unit/test_port_roles.py

logger = logging.getLogger("pcdb.health")

# What a target's platform_metrics() gives as inputs (limits, counters), not as metrics.
_PLATFORM_INPUTS = {"storage_quota_bytes", "cpu_count", "iops_limit", "cpu_seconds_total", "disk_operations_total"}
SLOW_STATEMENT_MS = 1000.0   # log_min_duration_statement of R-PAR-1: a statement this slow is "slow"


# -- the store ---------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (rule TEXT PRIMARY KEY, state TEXT NOT NULL, severity TEXT, value REAL,
    threshold REAL, pending_since TEXT, since TEXT, last_notified TEXT, annotation TEXT);
CREATE TABLE IF NOT EXISTS samples (at TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_by_metric ON samples (metric, at);
CREATE TABLE IF NOT EXISTS hourly (hour TEXT NOT NULL, metric TEXT NOT NULL, n INTEGER NOT NULL, total REAL NOT NULL,
    maximum REAL NOT NULL, PRIMARY KEY (hour, metric));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS silences (id INTEGER PRIMARY KEY, rule TEXT NOT NULL, until TEXT NOT NULL,
    reason TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (at TEXT NOT NULL, rule TEXT NOT NULL, transition TEXT NOT NULL,
    severity TEXT NOT NULL, channels TEXT NOT NULL, outcome TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (at TEXT PRIMARY KEY, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latest (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL, report TEXT NOT NULL);
"""


class Store:
    """The alert state, metric history, silences and sent notifications of one environment."""

    def __init__(self, path: Path):
        self.path = private_file(path)            # 0600 before SQLite opens it (its -wal too)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def alert(self, rule: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM alerts WHERE rule = ?", (rule,))
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row)) if row else None

    def alerts(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM alerts ORDER BY rule")
        return [dict(zip([c[0] for c in cur.description], r)) for r in cur.fetchall()]

    def save_alert(self, a: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO alerts VALUES (:rule, :state, :severity, :value, :threshold, "
                        ":pending_since, :since, :last_notified, :annotation)", a)

    def counters(self) -> dict[str, tuple[float, datetime]]:
        return {n: (v, datetime.fromisoformat(at)) for n, v, at in self.db.execute("SELECT * FROM counters")}

    def save_counters(self, values: dict[str, float], at: datetime) -> None:
        self.db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                            [(n, v, at.isoformat()) for n, v in values.items()])

    def record(self, at: datetime, metrics: dict[str, float | None], keep: timedelta) -> None:
        values = [(at.isoformat(), k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float))]
        hour = at.replace(minute=0, second=0, microsecond=0).isoformat()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO samples VALUES (?, ?, ?)", values)
            self.db.executemany(
                "INSERT INTO hourly VALUES (?, ?, 1, ?, ?) ON CONFLICT (hour, metric) DO UPDATE SET n = n + 1, "
                "total = total + excluded.total, maximum = max(maximum, excluded.maximum)",
                [(hour, k, v, v) for _, k, v in values])
            self.db.execute("DELETE FROM samples WHERE at < ?", ((at - keep).isoformat(),))
            self.db.execute("DELETE FROM hourly WHERE hour < ?", ((at - timedelta(days=400)).isoformat(),))

    def series(self, metric: str, since: datetime) -> list[tuple[datetime, float]]:
        return [(datetime.fromisoformat(at), v) for at, v in self.db.execute(
            "SELECT at, value FROM samples WHERE metric = ? AND at >= ? ORDER BY at", (metric, since.isoformat()))]

    def silence(self, rule: str, until: datetime, reason: str, now: datetime) -> int:
        cur = self.db.execute("INSERT INTO silences (rule, until, reason, created) VALUES (?, ?, ?, ?)",
                              (rule, until.isoformat(), reason, now.isoformat()))
        return int(cur.lastrowid)

    def silenced_until(self, rule: str, now: datetime) -> datetime | None:
        row = self.db.execute("SELECT max(until) FROM silences WHERE (rule = ? OR rule = '*') AND until > ?",
                              (rule, now.isoformat())).fetchone()
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    def active_silences(self, now: datetime) -> list[dict]:
        return [{"id": i, "rule": r, "until": u, "reason": why} for i, r, u, why in self.db.execute(
            "SELECT id, rule, until, reason FROM silences WHERE until > ? ORDER BY id", (now.isoformat(),))]

    def log_notification(self, at: datetime, rule: str, transition: str, severity: str, channels: list[str],
                         outcome: dict) -> None:
        self.db.execute("INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?)",
                        (at.isoformat(), rule, transition, severity, ",".join(channels), json.dumps(outcome)))

    def notifications(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM notifications ORDER BY at")
        return [dict(zip([c[0] for c in cur.description], r)) for r in cur.fetchall()]

    def last_run(self) -> datetime | None:
        row = self.db.execute("SELECT max(at) FROM runs").fetchone()
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    def save_latest(self, at: datetime, report: dict) -> None:
        """The last run's whole report, for a command that asks without running (``pcdb health``)."""
        self.db.execute("INSERT OR REPLACE INTO latest VALUES (1, ?, ?)", (at.isoformat(), json.dumps(report, default=str)))

    def latest(self) -> tuple[datetime, dict] | None:
        row = self.db.execute("SELECT at, report FROM latest").fetchone()
        return (datetime.fromisoformat(row[0]), json.loads(row[1])) if row else None

    def mark_run(self, at: datetime, status: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?)", (at.isoformat(), status))
        self.db.execute("DELETE FROM runs WHERE at < ?", ((at - timedelta(days=14)).isoformat(),))


def store_for(env: Environment) -> Store:
    from pcdb.orchestrator import server_config

    return Store(server_config(env).home / "health" / f"{env.name}.sqlite")


# -- sampling ----------------------------------------------------------------------------------

def _rate(now_value: float, name: str, before: dict, at: datetime, per: float) -> float | None:
    if name not in before:
        return None
    old, then = before[name]
    seconds = (at - then).total_seconds()
    if seconds <= 0 or now_value < old:       # a stats reset or a failover: no rate this time
        return None
    return (now_value - old) / seconds * per


def _sync_standby(ctx: RunbookContext, streaming: float) -> float | None:
    """1 when the primary has its synchronous copy (RPO 0 holds), 0 when it runs without one: the
    standby streaming synchronously where pcdb sees it (the sandbox), else the platform's HA state
    (Azure: ZoneRedundant HA Healthy); None when the environment has no HA."""
    if SYNC_STANDBY_VISIBLE in ctx.target.capabilities:
        return streaming
    if ctx.env.server.high_availability.mode == "Disabled":
        return None
    try:
        return 1.0 if ctx.target.server_state().ha_state == "Healthy" else 0.0
    except Exception as exc:  # noqa: BLE001 - the platform's API down: no reading, not a false alarm
        logger.warning("HA state of %s: %s", ctx.env.name, exc)
        return None


def sample(ctx: RunbookContext, store: Store, now: datetime,
           explains_later: str | None = None) -> tuple[dict, dict, list[dict], list[dict]]:
    """One sample of every metric the catalog reads (None: no data here), the business rates, the
    timeline moves pcdb made on purpose (``_planned_failover``: not a failover-event), and a move
    held while ``explains_later``, a run that records its planned failovers when it ends, still
    holds the environment (``_held_move``)."""
    env = ctx.env
    metrics: dict[str, float | None] = {"up": 0.0, "connection_failed": 1.0, "writable_primary": 0.0}
    business: dict[str, float | None] = dict.fromkeys(BUSINESS)
    try:
        platform = ctx.target.platform_metrics()
    except Exception as exc:  # noqa: BLE001 - the platform's API down must not stop the SQL probes
        logger.warning("platform metrics of %s: %s", env.name, exc)
        platform = {}
    metrics |= {k: v for k, v in platform.items() if k not in _PLATFORM_INPUTS}
    before = store.counters()
    counters: dict[str, float] = {}
    planned: dict | None = None
    held: dict | None = None
    try:
        with ctx.connect() as conn:
            conn.execute("SET statement_timeout = '20s'")
            metrics["up"], metrics["connection_failed"] = 1.0, 0.0
            metrics["version_support_days_left"] = _version_support_days_left(conn.info.server_version, now)
            cur = conn.execute(query("health.sql", "instant"))
            metrics |= {c.name: (float(v) if v is not None else None) for c, v in zip(cur.description, cur.fetchone())}
            cur = conn.execute(query("health.sql", "counters"))
            counters |= {c.name: float(v or 0) for c, v in zip(cur.description, cur.fetchone())}
            if conn.execute(query("catalog.sql", "pg_stat_statements_installed")).fetchone()[0]:
                cur = conn.execute(query("health.sql", "statement_counters"), {"slow_ms": SLOW_STATEMENT_MS})
                counters |= {f"stmt_{c.name}": float(v or 0) for c, v in zip(cur.description, cur.fetchone())}
            streams = conn.execute(query("health.sql", "replication")).fetchall()
            replicas = [float(r[2]) for r in streams if r[1] == "async"]
            if replicas:
                metrics["replica_lag_seconds"] = max(replicas)
                counters["replica_seen"] = now.timestamp()
            elif "replica_seen" in before:
                # The read replica stopped streaming: it falls behind from the moment it was last seen.
                metrics["replica_lag_seconds"] = now.timestamp() - before["replica_seen"][0]
                counters["replica_seen"] = before["replica_seen"][0]
            metrics["standby_streaming"] = float(any(r[1] in ("sync", "quorum") for r in streams))
            metrics["sync_standby"] = _sync_standby(ctx, metrics["standby_streaming"])
            timeline = _timeline(conn)
            planned = _planned_failover(conn, env, before.get("timeline"), timeline)
            held = None if planned else _held_move(env, before.get("timeline"), timeline, now, explains_later)
            business |= _business(conn, env)
            metrics["partitions_ahead"] = _partitions_ahead(conn, env, now)
            metrics["restore_budget_percent"] = _restore_budget_percent(conn, now)
            metrics["escalated_roles"] = float(sum(
                1 for f in security.role_inventory(conn, env.security.roles, env.server.admin.user,
                                                   ctx.target.own_roles())
                if any(not p.startswith("not in the spec") for p in f.problems)))
    except psycopg.Error as exc:
        logger.warning("primary of %s unreachable: %s", env.name, str(exc).strip().splitlines()[0])
        timeline = None
    # The sandbox's CPU time and disk operations: cumulative counters, made percentages here.
    for counter, metric, limit, per in (("cpu_seconds_total", "cpu_percent", "cpu_count", 100.0),
                                        ("disk_operations_total", "iops_percent", "iops_limit", 100.0)):
        if platform.get(counter) is not None and metrics.get(metric) is None:
            counters[counter] = float(platform[counter])
            rate = _rate(counters[counter], counter, before, now, 1)
            metrics[metric] = rate / float(platform[limit]) * per if rate is not None and platform.get(limit) else None
        metrics.setdefault(metric, None)        # not measurable here (a tmpfs has no disk): said, not left out
    quota = platform.get("storage_quota_bytes")
    if metrics.get("storage_percent") is None and quota and metrics.get("database_bytes") is not None:
        metrics["storage_percent"] = 100.0 * metrics["database_bytes"] / quota
    if "connection_failed" in platform and platform["connection_failed"]:
        metrics["connection_failed"] = 1.0
    metrics["tps"] = _rate(counters.get("transactions", 0), "transactions", before, now, 1) if counters else None
    metrics["deadlocks_per_hour"] = _rate(counters.get("deadlocks", 0), "deadlocks", before, now, 3600) if counters else None
    hits = _rate(counters.get("blks_hit", 0), "blks_hit", before, now, 1) if counters else None
    reads = _rate(counters.get("blks_read", 0), "blks_read", before, now, 1) if counters else None
    metrics["cache_hit_percent"] = (100.0 * hits / (hits + reads)) if hits is not None and reads is not None \
        and hits + reads > 0 else None
    calls = _rate(counters.get("stmt_calls", 0), "stmt_calls", before, now, 1) if "stmt_calls" in counters else None
    total = _rate(counters.get("stmt_total_ms", 0), "stmt_total_ms", before, now, 1) if "stmt_calls" in counters else None
    slow = _rate(counters.get("stmt_slow_calls", 0), "stmt_slow_calls", before, now, 60) if "stmt_calls" in counters else None
    metrics["avg_query_time_ms"] = (total / calls) if calls and total is not None else None
    metrics["slow_queries_per_minute"] = slow
    metrics["slow_query_percent"] = (100.0 * slow / 60 / calls) if calls and slow is not None else None
    failover = 0.0
    if timeline is not None:
        if "timeline" in before and timeline > before["timeline"][0] and planned is None and held is None:
            failover = 1.0
        if held is None:        # held: the next run compares with the timeline before the move again
            counters["timeline"] = timeline
    metrics["failover_event"] = failover
    expires = _tls_days_left(ctx, now)
    metrics["tls_days_left"] = expires
    store.save_counters(counters, now)
    for name, value in business.items():
        metrics[name] = value
    return metrics, business, [planned] if planned else [], [held] if held else []


def _version_support_days_left(server_version: int, now: datetime) -> float | None:
    """Days until the running major leaves Azure's standard support (negative after it: the
    ``version-support`` rule is critical then); None for a major newer than pcdb's version table."""
    support = versions.support(server_version, now.date())
    if support.days_left is None:
        return -100_000.0 if support.status == "unsupported" else None
    return float(support.days_left)


def _timeline(conn) -> float | None:
    try:
        return float(conn.execute(query("health.sql", "timeline")).fetchone()[0])
    except psycopg.Error:
        return None


def _business(conn, env: Environment) -> dict:
    if conn.execute(query("catalog.sql", "relation_missing"), (f"{env.service.schema_name}.pc_product_change_history",)
                    ).fetchone()[0]:
        return {}
    cur = conn.execute(psql.SQL(query("health.sql", "business")).format(schema=psql.Identifier(env.service.schema_name)),
                       {"window": f"{int(env.monitoring.health.business_window.total_seconds())} seconds"})
    row = dict(zip([c.name for c in cur.description], cur.fetchone()))
    out = {"product_change_success_rate": _float(row["product_change_success_rate"]),
           "kos_success_rate": _float(row["kos_integration_success_rate"]),
           "avg_processing_seconds": _float(row["avg_processing_time"])}
    since = clock.now() - env.monitoring.health.business_window
    for metric in env.monitoring.business_metrics:
        if metric.probe:
            out[ALIASES.get(metric.metric, metric.metric)] = _probe(conn, metric.probe, since)
    return out


def _probe(conn, text: str, since: datetime) -> float | None:
    """A spec's business probe (checked at load to be one read-only SELECT): read only, 5 s at most."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET LOCAL statement_timeout = '5s'")
        cur = psycopg.RawCursor(conn)
        cur.execute(text, [since] if "$1" in text else None)
        row = cur.fetchone()
    return _float(row[0]) if row else None


def _float(value) -> float | None:
    return None if value is None else round(float(value), 3)


def _restore_budget_percent(conn, now: datetime) -> float | None:
    """The latest restore test's duration projected at the database's size, as a percentage of
    backup.verification.window (pcdb/backups.py: budget), from its ledger row; None without one
    in the last eight days."""
    from pcdb.backups import latest_budget

    latest = latest_budget(conn, now)
    planned = latest[0] if latest else None
    if planned and planned.get("window_seconds"):
        return round(100.0 * planned["projected_seconds"] / planned["window_seconds"], 1)
    return None


def _partitions_ahead(conn, env: Environment, now: datetime) -> float | None:
    from zoneinfo import ZoneInfo

    from pcdb import maintenance, schema

    if conn.execute(query("catalog.sql", "relation_missing"), (f"{env.service.schema_name}.{schema.KOS_LOG}",)).fetchone()[0]:
        return None
    names = {p.name for p in maintenance.list_partitions(conn, env.service.schema_name)}
    return float(maintenance.ahead_months(names, now.astimezone(ZoneInfo(env.service.timezone)).date()))


def _tls_days_left(ctx: RunbookContext, now: datetime) -> float | None:
    try:
        expires = ctx.target.tls_certificate_expiry()
    except Exception:  # noqa: BLE001 - a certificate that cannot be read is no metric, not a crash
        return None
    return None if expires is None else round((expires - now).total_seconds() / 86400, 2)


# -- evaluation --------------------------------------------------------------------------------

@dataclass
class Transition:
    rule: Rule
    kind: str          # firing | resolved | escalated | reminder
    severity: str
    value: float | None
    threshold: float | None
    annotation: str | None
    silenced_until: datetime | None


@dataclass
class Report:
    status: str
    checked_at: str
    metrics: dict
    business: dict
    alerts: list[dict] = field(default_factory=list)
    silences: list[dict] = field(default_factory=list)
    notified: list[dict] = field(default_factory=list)
    serving: str | None = None     # after a real region failover: which server production runs on, plainly
    planned_failovers: list[dict] = field(default_factory=list)  # timeline moves pcdb made on purpose (not alerts)
    timeline_moves_held: list[dict] = field(default_factory=list)  # seen while pcdb's install runs: decided after it

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(env: Environment, rules: list[Rule], metrics: dict, store: Store, now: datetime,
             annotation: str | None = None) -> tuple[list[dict], list[Transition]]:
    """Advance every rule's alert state by this sample; return the alerts to show and the
    transitions to notify."""
    settings = env.monitoring.health
    shown, transitions = [], []
    for rule in rules:
        value = metrics.get(rule.metric)
        a = store.alert(rule.name) or {"rule": rule.name, "state": "ok", "severity": None, "value": None,
                                        "threshold": None, "pending_since": None, "since": None,
                                        "last_notified": None, "annotation": None}
        silenced = store.silenced_until(rule.name, now)
        level = rule.breached(value) if value is not None else None
        event = None
        if value is None:
            pass                                                  # no data: the state stands
        elif level:
            if a["state"] in ("ok", "resolved"):
                a |= {"state": "pending", "pending_since": now.isoformat(), "severity": level}
            if a["state"] == "pending":
                a["severity"] = level if level == "critical" else a["severity"] or level
                if now - datetime.fromisoformat(a["pending_since"]) >= rule.duration:
                    a |= {"state": "firing", "since": now.isoformat(), "annotation": annotation}
                    event = "firing"
            elif a["state"] == "firing":
                if level == "critical" and a["severity"] == "warning":
                    event = "escalated"
                    a["severity"] = "critical"
                elif not silenced and (not a["last_notified"] or   # never told (it was silenced): tell now
                                       now - datetime.fromisoformat(a["last_notified"]) >= settings.reminder_every):
                    event = "reminder"
            a |= {"value": value, "threshold": rule.threshold(a["severity"] or level)}
        else:
            if a["state"] == "pending":
                a |= {"state": "ok", "pending_since": None, "severity": None}
            elif a["state"] == "firing":
                if rule.cleared(value, a["severity"], settings.hysteresis_percent):
                    a["state"] = "resolved"
                    event = "resolved"
            a["value"] = value
        if event:
            transitions.append(Transition(rule, event, a["severity"], value, a["threshold"],
                                          annotation or a.get("annotation"), silenced))
            if not silenced:
                a["last_notified"] = now.isoformat()
        if a["state"] in ("pending", "firing") or event == "resolved":
            shown.append({"rule": rule.name, "title": rule.title, "severity": a["severity"], "state": a["state"],
                          "value": value, "threshold": a["threshold"],
                          "since": a["since"] if a["state"] != "pending" else a["pending_since"],
                          "channels": list(channels_of(env, rule, a["severity"])),
                          "annotation": annotation or a.get("annotation"),
                          "silenced_until": silenced.isoformat() if silenced else None})
        if a["state"] == "resolved":
            a |= {"state": "ok", "pending_since": None, "since": None, "severity": None, "annotation": None,
                  "last_notified": None}
        store.save_alert(a)
    return shown, transitions


def channels_of(env: Environment, rule: Rule, severity: str | None) -> tuple[str, ...]:
    if rule.channels is not None:
        return rule.channels
    return tuple(env.notifications.routing.get(severity or "warning", []))


def status_of(alerts: list[dict]) -> str:
    firing = [a["severity"] for a in alerts if a["state"] == "firing"]
    return "critical" if "critical" in firing else "warning" if firing else "ok"


def run(ctx: RunbookContext, store: Store, send: Callable[[str, str, str, list[str]], dict],
        now: datetime | None = None, annotation: str | None = None, explains_later: str | None = None) -> Report:
    """Sample, evaluate, notify each transition once (not while silenced), record the history.
    ``annotation``: the run of pcdb's that holds the environment; ``explains_later``: the same when
    it is one that records its planned failovers as it ends (``explains_later()``)."""
    env = ctx.env
    now = now or clock.now()
    metrics, business, planned, held = sample(ctx, store, now, explains_later)
    alerts, transitions = evaluate(env, catalog(env), metrics, store, now, annotation)
    notified = []
    for t in transitions:
        channels = list(channels_of(env, t.rule, t.severity))
        if t.silenced_until:
            store.log_notification(now, t.rule.name, t.kind, t.severity, channels, {"silenced": t.silenced_until.isoformat()})
            continue
        subject = f"pcdb {env.name} {t.kind.upper()} [{t.severity}] {t.rule.title}"
        body = (f"{t.rule.name}: {t.rule.metric} = {t.value} (threshold {t.rule.operator} {t.threshold}); "
                f"{t.kind} at {now.isoformat(timespec='seconds')}"
                + (f"; during {t.annotation}" if t.annotation else ""))
        outcome = send(t.severity if t.kind != "resolved" else "info", subject, body, channels)
        store.log_notification(now, t.rule.name, t.kind, t.severity, channels, outcome)
        notified.append({"rule": t.rule.name, "transition": t.kind, "severity": t.severity, "channels": channels})
    store.record(now, metrics, env.monitoring.health.history_minutes)
    try:  # on Azure, the rates go to Azure Monitor for the §6.3 workbook; the sandbox keeps them in the store
        ctx.target.publish_business_metrics(business, now)
    except Exception as exc:  # noqa: BLE001 - a dashboard feed must never stop the alerting
        logger.warning("business metrics of %s not published: %s", env.name, exc)
    report = Report(status_of(alerts), now.isoformat(timespec="seconds"),
                    {k: (round(v, 3) if isinstance(v, float) else v) for k, v in metrics.items() if k not in BUSINESS},
                    business, alerts, store.active_silences(now), notified, _serving(ctx), planned, held)
    store.mark_run(now, report.status)
    store.save_latest(now, report.as_dict())
    return report


def _serving(ctx: RunbookContext) -> str | None:
    try:
        return ctx.target.serving()
    except Exception as exc:  # noqa: BLE001 - the platform's API down must not stop the alerting
        logger.warning("which server %s runs on: %s", ctx.env.name, exc)
        return None


def preview(ctx: RunbookContext, store: Store, now: datetime | None = None) -> Report:
    """The rules evaluated now, from the alert state a scheduled run left, recording and notifying
    nothing: the store is as it was afterwards (one SQLite transaction, rolled back). For a person
    asking when no server runs the schedule; what it shows firing nobody has been told of here."""
    now = now or clock.now()
    store.db.execute("BEGIN")
    try:
        metrics, business, planned, held = sample(ctx, store, now)
        alerts, _ = evaluate(ctx.env, catalog(ctx.env), metrics, store, now)
        silences = store.active_silences(now)
    finally:
        store.db.execute("ROLLBACK")
    return Report(status_of(alerts), now.isoformat(timespec="seconds"),
                  {k: (round(v, 3) if isinstance(v, float) else v) for k, v in metrics.items() if k not in BUSINESS},
                  business, alerts, silences, [], _serving(ctx), planned, held)


HOLD_MOVE_AT_MOST = timedelta(minutes=15)


def explains_later(holder: dict | None) -> str | None:
    """The run holding the environment's slot, named, when it is one that records the failovers
    it makes on purpose in its ledger row as it ends (``ledger.PLANNED_FAILOVER_FLOWS``): the
    slot's ``what`` begins with the flow's name ("install", "upgrade to 16")."""
    from pcdb import ledger

    what = str((holder or {}).get("what") or "")
    if what.split(" ", 1)[0] not in ledger.PLANNED_FAILOVER_FLOWS:
        return None
    return f"pcdb {what} run {holder.get('run_id') or '-'}"


def _held_move(env: Environment, before: tuple[float, datetime] | None, timeline: float | None, now: datetime,
               explains_later: str | None) -> dict | None:
    """A timeline move not explained yet, seen while ``explains_later`` holds the environment: its
    ledger row, written as it ends, may explain it (``_planned_failover``), so the move is held,
    not paged, and the runs after it compare with the timeline before the move until the holder
    is gone. Then the move is explained, or it fires. At most ``HOLD_MOVE_AT_MOST`` after the
    last sample of the old timeline: a holder that lasts longer (a decision awaited) does not hold
    back a real failover longer than that.

    Without it, a health run between Phase 7's failover test and the end of the install (the
    handover, then the ledger row) paged a critical failover-event, annotated, and opened an
    incident."""
    if explains_later is None or before is None or timeline is None or timeline <= before[0]:
        return None
    until = before[1] + HOLD_MOVE_AT_MOST
    if now > until:
        return None
    logger.info("timeline of %s moved %d -> %d while %s holds it: held until it ends (at most until %s)",
                env.name, int(before[0]), int(timeline), explains_later, until.isoformat(timespec="seconds"))
    return {"from_timeline": int(before[0]), "to_timeline": int(timeline), "during": explains_later,
            "until": until.isoformat(timespec="seconds")}


def _planned_failover(conn: psycopg.Connection, env: Environment, before: tuple[float, datetime] | None,
                      timeline: float | None) -> dict | None:
    """Whether pcdb's own runs moved the primary's timeline since the last sample on purpose, read
    from the run ledger over the sample's connection: every timeline in between must have been
    made by a run of this environment recorded since that sample, with the figure
    ``ledger.PLANNED_FAILOVERS``. The install's Phase 7 is one (it fails over and back, as a test,
    and says so in its report); a drill is not (it rehearses an outage, so its alerts fire,
    annotated with the drill), nor is a real failover. One timeline more than those runs made, and
    the move is not explained: it fires. None also when nothing moved or the ledger cannot be read.

    A health run sees such a move after the install has ended (the every-minute run that sampled
    the timeline before Phase 7 comes next after it), when the slot's holder that would annotate
    the alert is gone: without this, a fresh install paged a critical failover-event and opened an
    incident for its own test."""
    if before is None or timeline is None or timeline <= before[0]:
        return None
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    old, new, moved = int(before[0]), int(timeline), set(range(int(before[0]) + 1, int(timeline) + 1))
    try:
        rows = ledger.rows(conn, LEDGER_SCHEMA, before[1])
    except psycopg.Error as exc:
        logger.warning("the run ledger of %s could not be read to explain the timeline's move: %s", env.name,
                       str(exc).strip().splitlines()[0])
        return None
    made: set[int] = set()
    by: list[str] = []
    for row in rows:
        figure = (row.get("figures") or {}).get(ledger.PLANNED_FAILOVERS)
        if row.get("environment") != env.name or not isinstance(figure, dict):
            continue
        timelines = {t for t in figure.get("timelines") or [] if isinstance(t, int)}
        if timelines & moved:
            made |= timelines
            ended = row["ended_at"].isoformat(timespec="seconds") if row.get("ended_at") else "-"
            by.append(f"pcdb {row['flow']} run {row['run_id']} ({figure.get('check', 'a planned failover')}, ended {ended})")
    if not by or not moved <= made:
        return None
    logger.info("timeline of %s moved %d -> %d on purpose: %s; not a failover-event alert", env.name, old, new,
                "; ".join(by))
    return {"from_timeline": old, "to_timeline": new, "by": by}
