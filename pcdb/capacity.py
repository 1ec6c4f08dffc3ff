"""Weekly capacity analysis (§8.1.2, §8.3.1): where the storage goes, when each limit is
reached, what to do.

Inputs: hourly averages and maxima of the platform's metrics (Azure Monitor on Azure, at PT1H
over up to 93 days; the health runbook's store on the sandbox, which rolls every sample up into
hours as it records it), plus a SQL snapshot of the service database taken by every run and
kept in ``<orchestrator home>/capacity/<env>.sqlite``: table, index and TOAST sizes, rows, XID
ages, a bloat estimate, sequence use and the server log's size (C-6).

Forecasts (pcdb.forecast's robust drift model) go to the limits Azure really has: the warning
threshold of §6.1.1, storage autogrow (free < min(20 %, 64 GiB) up to 1 TiB; Premium SSD
doubles the disk), read-only (≥ 95 % used or < 5 GiB free), the 4 TiB boundary past which
growth is offline, the 6-month projection of §8.3.1, connections, CPU and memory both ways,
and transaction-ID wraparound. Every forecast is stored and scored by later runs.
"""

from __future__ import annotations

import base64
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psycopg

from pcdb.config import CapacitySettings, Environment
from pcdb.forecast import DAY, Daily, Drift, daily, drift, sparkline
from pcdb.private import private_dir, private_file
from pcdb.sql import query
from pcdb.targets.base import Telemetry

PORT = Telemetry   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)

GiB = 2**30
TiB = 2**40
WRAPAROUND_AGE = 2**31 - 10**6           # PostgreSQL stops assigning XIDs 1 million short of 2^31
ONLINE_GROWTH_LIMIT = 4 * TiB            # Azure grows storage online up to 4 TiB (P50); beyond: offline
HORIZONS = (7, 14, 28)                   # days ahead each run's forecasts are stored for scoring
# The health store's metric names on the sandbox -> the analysis's (Azure Monitor's) names.
STORE_SOURCES = {"storage_used": "database_bytes", "storage_percent": "storage_percent",
                 "active_connections": "active_connections", "max_connections": "max_connections",
                 "cpu_percent": "cpu_percent", "memory_percent": "memory_percent", "iops_percent": "iops_percent",
                 "xid_age": "xid_age"}


@dataclass(frozen=True)
class Hourly:
    """One metric's hourly points: hour start (epoch seconds), average and maximum."""

    t: np.ndarray
    avg: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, rows) -> Hourly:
        if not rows:
            return cls(np.empty(0), np.empty(0), np.empty(0))
        a = np.asarray(rows, dtype=float)
        order = np.argsort(a[:, 0], kind="stable")
        return cls(a[order, 0], a[order, 1], a[order, 2])

    def since(self, start: float) -> Hourly:
        keep = self.t >= start
        return Hourly(self.t[keep], self.avg[keep], self.max[keep])

    def whole_days(self, now_day: float) -> Hourly:
        """The points before today (UTC): the trends are fitted on whole days only, so that the
        hour a run happens at never changes them (today's hours so far once counted as a day
        from its 18th hour on)."""
        keep = self.t < np.floor(now_day) * DAY
        return Hourly(self.t[keep], self.avg[keep], self.max[keep])

    def __len__(self) -> int:
        return len(self.t)


def settings_of(env: Environment) -> tuple[CapacitySettings, bool]:
    """The environment's capacity settings, and whether they are the defaults (not in the spec)."""
    return (env.operations.capacity, False) if env.operations.capacity else (CapacitySettings(), True)


# -- inputs --------------------------------------------------------------------------------------

def history_from_store(db: sqlite3.Connection, start: datetime, end: datetime) -> dict[str, Hourly]:
    """The health store's hourly roll-ups of the metrics the analysis reads."""
    out = {}
    for name, source in STORE_SOURCES.items():
        rows = db.execute("SELECT CAST(strftime('%s', hour) AS INTEGER), total / n, maximum FROM hourly "
                          "WHERE metric = ? AND hour >= ? AND hour <= ?",
                          (source, start.isoformat(), end.isoformat())).fetchall()
        out[name] = Hourly.of(rows)
    return out


def history_from_points(points: dict[str, list[tuple[datetime, float, float]]]) -> dict[str, Hourly]:
    """A platform's hourly points ({metric: [(time, average, maximum)]}) as the analysis reads them."""
    return {name: Hourly.of([(t.timestamp(), a, m) for t, a, m in rows]) for name, rows in points.items()}


def snapshot(conn: psycopg.Connection) -> dict:
    """The SQL snapshot of the service database (read only)."""
    cur = conn.execute(query("capacity.sql", "relations"))
    cols = [c.name for c in cur.description]
    relations = [dict(zip(cols, r)) for r in cur.fetchall()]
    sequences = [{"name": n, "used_percent": float(p)} for n, p in conn.execute(query("capacity.sql", "sequences"))]
    logs = None
    try:
        with conn.transaction():
            size, files = conn.execute(query("capacity.sql", "log_volume")).fetchone()
            logs = {"bytes": int(size), "files": int(files)}
    except psycopg.errors.InsufficientPrivilege:
        logs = None                     # the role may not list the log directory: not measured here
    return {"relations": relations, "sequences": sequences, "logs": logs}


def take_snapshot(ctx, store: Store, now: datetime) -> dict:
    """Snapshot the service database (read only, 60 s at most) into ``store``; a summary back."""
    with ctx.connect() as conn:
        conn.execute("SET statement_timeout = '60s'")
        conn.execute("SET default_transaction_read_only = on")
        snap = snapshot(conn)
    store.save_snapshot(now, snap)
    return {"relations": len(snap["relations"]), "sequences": len(snap["sequences"]),
            "log_bytes": snap["logs"]["bytes"] if snap["logs"] else None}


def load_history(target: Telemetry, health_db: sqlite3.Connection, now: datetime, weeks: int) -> tuple[dict[str, Hourly], str]:
    """The metric history the analysis reads, and where it came from."""
    start = now - timedelta(weeks=weeks)
    points = target.metric_history(start, now)
    if points is None:
        return history_from_store(health_db, start, now), "the health runbook's samples (hourly roll-ups)"
    return history_from_points(points), "Azure Monitor (hourly averages and maxima)"


class Store:
    """Snapshots and forecasts of one environment, kept between the weekly runs."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS relations (at TEXT NOT NULL, name TEXT NOT NULL, partitions INTEGER NOT NULL,
        heap_bytes INTEGER NOT NULL, index_bytes INTEGER NOT NULL, toast_bytes INTEGER NOT NULL,
        row_count INTEGER NOT NULL, xid_age INTEGER, bloat_bytes INTEGER NOT NULL, PRIMARY KEY (at, name));
    CREATE TABLE IF NOT EXISTS sequences (at TEXT NOT NULL, name TEXT NOT NULL, used_percent REAL NOT NULL,
        PRIMARY KEY (at, name));
    CREATE TABLE IF NOT EXISTS logs (at TEXT PRIMARY KEY, bytes INTEGER NOT NULL, files INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS forecasts (made_day INTEGER NOT NULL, metric TEXT NOT NULL, horizon INTEGER NOT NULL,
        target_day INTEGER NOT NULL, value REAL NOT NULL, low REAL NOT NULL, high REAL NOT NULL,
        PRIMARY KEY (made_day, metric, horizon));
    """

    def __init__(self, path: Path):
        self.path = private_file(path)            # 0600 before SQLite opens it (its -wal too)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.executescript(self.SCHEMA)

    def close(self) -> None:
        self.db.close()

    def save_snapshot(self, at: datetime, snap: dict) -> None:
        stamp = at.isoformat()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO relations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                (stamp, r["name"], r["partitions"], r["heap_bytes"], r["index_bytes"], r["toast_bytes"],
                 r["row_count"], r["xid_age"], r["bloat_bytes"]) for r in snap["relations"]])
            self.db.executemany("INSERT OR REPLACE INTO sequences VALUES (?, ?, ?)",
                                [(stamp, s["name"], s["used_percent"]) for s in snap["sequences"]])
            if snap.get("logs"):
                self.db.execute("INSERT OR REPLACE INTO logs VALUES (?, ?, ?)",
                                (stamp, snap["logs"]["bytes"], snap["logs"]["files"]))

    def snapshot_times(self, since: datetime, until: datetime) -> list[datetime]:
        return [datetime.fromisoformat(a) for (a,) in self.db.execute(
            "SELECT DISTINCT at FROM relations WHERE at >= ? AND at <= ? ORDER BY at",
            (since.isoformat(), until.isoformat()))]

    def relations_at(self, at: datetime) -> dict[str, dict]:
        cur = self.db.execute("SELECT * FROM relations WHERE at = ?", (at.isoformat(),))
        cols = [c[0] for c in cur.description]
        return {r[1]: dict(zip(cols, r)) for r in cur.fetchall()}

    def sequences_at(self, at: datetime) -> list[dict]:
        return [{"name": n, "used_percent": p} for n, p in self.db.execute(
            "SELECT name, used_percent FROM sequences WHERE at = ? ORDER BY used_percent DESC", (at.isoformat(),))]

    def logs_between(self, since: datetime, until: datetime) -> list[tuple[datetime, int]]:
        return [(datetime.fromisoformat(a), b) for a, b in self.db.execute(
            "SELECT at, bytes FROM logs WHERE at >= ? AND at <= ? ORDER BY at", (since.isoformat(), until.isoformat()))]

    def save_forecasts(self, made_day: int, metric: str, rows: list[tuple[int, float, float, float]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO forecasts VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(made_day, metric, h, made_day + h, v, lo, hi) for h, v, lo, hi in rows])

    def forecasts_due(self, first_day: int, last_day: int) -> list[tuple]:
        return self.db.execute("SELECT metric, made_day, horizon, target_day, value, low, high FROM forecasts "
                               "WHERE target_day >= ? AND target_day <= ? AND made_day < target_day ORDER BY 1, 2, 3",
                               (first_day, last_day)).fetchall()


def store_for(env: Environment) -> Store:
    from pcdb.orchestrator import server_config

    return Store(server_config(env).home / "capacity" / f"{env.name}.sqlite")


# -- limits --------------------------------------------------------------------------------------

def autogrow_trigger(size: int) -> int:
    """Used bytes at which Azure's storage autogrow fires: free < min(20 %, 64 GiB) up to 1 TiB,
    min(10 %, 64 GiB) above."""
    share = 0.2 if size <= TiB else 0.1
    return int(size - min(share * size, 64 * GiB))


def readonly_at(size: int) -> int:
    """Used bytes at which Azure makes the server read-only: ≥ 95 % used or < 5 GiB free."""
    return int(min(0.95 * size, size - 5 * GiB))


def azure_max_connections(memory_bytes: int) -> int:
    """Azure's default max_connections of a SKU by its memory (Azure's limits page), before the 15
    it reserves for replication and monitoring."""
    gib = memory_bytes / GiB
    for upto, value in ((2, 50), (4, 429), (8, 859), (16, 1718), (32, 3437)):
        if gib <= upto:
            return value
    return 5000


_SKU = re.compile(r"^(Standard_[DE])(\d+)(\w*_v\d)$")


def neighbour_sku(sku: str, step: int) -> str | None:
    """The next size up (+1) or down (-1) of a General Purpose / Memory Optimized SKU."""
    match = _SKU.match(sku)
    if not match:
        return None
    cores = int(match.group(2))
    sizes = [2, 4, 8, 16, 32, 48, 64]
    if cores not in sizes:
        return None
    i = sizes.index(cores) + step
    return f"{match.group(1)}{sizes[i]}{match.group(3)}" if 0 <= i < len(sizes) else None


def _threshold(env: Environment, metric: str, default: float) -> float:
    return next((t.value for t in env.monitoring.system_metrics if t.metric == metric), default)


# -- analysis ------------------------------------------------------------------------------------

def _day_iso(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, timezone.utc).date().isoformat()


def _r(value, digits: int = 1):
    return None if value is None else round(float(value), digits)


def _days(triple, offset: float) -> tuple:
    """Days from ``now`` (the forecast counts from its last day of data, ``offset`` days ago)."""
    return tuple(None if v is None else round(max(0.0, v - offset), 1) for v in triple)


def analyse(env: Environment, history: dict[str, Hourly], store: Store, now: datetime,
            weeks: int | None = None, quota_bytes: float | None = None) -> dict:
    """The capacity analysis of ``history`` and the stored snapshots as of ``now``. Stores this
    run's forecasts and scores the earlier ones that have come due."""
    cfg, defaults = settings_of(env)
    weeks = weeks or cfg.weeks
    # From the start of a UTC day: the window's first day is whole whatever the hour of the run
    # (a window cut at the run's hour moved the first day's median, and the date, with the hour).
    start = (now - timedelta(weeks=weeks)).astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    history = {k: v.since(start.timestamp()) for k, v in history.items()}
    hist = {k: v for k, v in history.items() if len(v)}
    now_day = now.timestamp() / DAY
    result: dict = {"env": env.name, "as_of": now.isoformat(timespec="seconds"), "weeks": weeks,
                    "settings": "defaults (operations.capacity is not in the spec)" if defaults
                    else "operations.capacity of the spec"}
    whole = hist["storage_used"].whole_days(now_day) if "storage_used" in hist else None
    storage_daily = daily(whole.t, whole.avg) if whole is not None \
        else Daily(np.empty(0, dtype=np.int64), np.empty(0))
    have = len(storage_daily.day)
    enough = have >= cfg.min_history_days
    if not enough:
        result["insufficient_history"] = {"have_days": have, "need_days": cfg.min_history_days}
    result["storage"] = _storage(env, cfg, hist, storage_daily, enough, now_day, quota_bytes)
    result["connections"] = _connections(env, hist, enough, now_day)
    result["cpu"] = _utilisation(hist, "cpu_percent", _threshold(env, "cpu_percent", 80), enough, env, now_day)
    result["memory"] = _utilisation(hist, "memory_percent", _threshold(env, "memory_percent", 85), enough, env,
                                    now_day)
    result["iops"] = _utilisation(hist, "iops_percent", _threshold(env, "iops_percent", 80), enough, env, now_day)
    result["sku"] = _sku_advice(env, cfg, result["cpu"], result["memory"])
    result["wraparound"] = _wraparound(hist, enough)
    result["tables"], result["sequences"] = _tables(store, start, now, cfg.top_tables)
    result["logs"] = _logs(store, start, now)
    model = storage_model(result)
    if model is not None:
        store.save_forecasts(model.day, "storage_used", [(h, *(float(x) for x in model.at(h))) for h in HORIZONS])
    accuracy = _accuracy(store, hist, now_day)
    if accuracy:
        result["forecast_accuracy"] = accuracy
    result["verdict"] = verdict(result)
    return result


def _storage(env, cfg, hist, series: Daily, enough: bool, now_day: float, quota: float | None) -> dict:
    used = float(hist["storage_used"].avg[-1]) if "storage_used" in hist else None
    limit = float(quota or env.server.storage.size)
    if "storage_percent" in hist and used and hist["storage_percent"].avg[-1] > 0:
        limit = used / (float(hist["storage_percent"].avg[-1]) / 100.0)   # the disk as it is now (autogrow)
        limit = float(round(limit / GiB) * GiB) if limit > GiB else limit
    warning_percent = _threshold(env, "storage_percent", 75)
    # The sandbox's quota stands for the spec's disk: Azure's rules are applied to that disk and
    # scaled to the quota (5 GiB free means nothing on a 2 GB quota).
    disk = float(env.server.storage.size) if quota else limit
    scale = limit / disk
    limits = {"warning": warning_percent / 100 * limit, "autogrow": autogrow_trigger(int(disk)) * scale,
              "readonly": readonly_at(int(disk)) * scale,
              "offline_growth": autogrow_trigger(ONLINE_GROWTH_LIMIT) * scale}
    auto = env.server.storage.auto_grow
    next_size = min(2 * disk, ONLINE_GROWTH_LIMIT) * scale if disk < ONLINE_GROWTH_LIMIT else None
    out = {"used_bytes": int(used) if used is not None else None, "limit_bytes": int(limit),
           "stands_for_bytes": int(disk) if quota else None,
           "used_percent": _r(100 * used / limit) if used is not None else None,
           "warning_percent": warning_percent,
           "growth_bytes_per_day": None, "days_to_warning": None, "days_to_autogrow": None, "days_to_readonly": None,
           "days_to_offline_growth": None, "interval": [None, None], "interval_percent": cfg.interval_percent,
           "limits_bytes": {k: int(v) for k, v in limits.items()},
           "autogrow": {"enabled": auto, "fires_at_bytes": int(limits["autogrow"]),
                        "next_size_bytes": int(next_size) if next_size else None,
                        "cost_factor": 2.0 if next_size == 2 * limit else (next_size / limit if next_size else None),
                        "next_step_extra_usd_per_month": _r((next_size - limit) / scale / GiB
                                                            * cfg.storage_price_usd_per_gib_month, 2)
                        if next_size and cfg.storage_price_usd_per_gib_month else None,
                        "note": "Premium SSD autogrow doubles the disk and storage never shrinks"
                        if auto else "autogrow is off: the server goes read-only at the read-only limit"},
           "txlogs_bytes": int(hist["txlogs_storage_used"].avg[-1]) if "txlogs_storage_used" in hist else None,
           "days_with_data": len(series.day),
           "days_without_data": series.span_days - len(series.day),     # gaps between the first and last day
           "steps": [], "projection": None}
    if not enough or used is None:
        return out
    model = drift(series, cfg.interval_percent)
    if model is None:
        return out
    offset = now_day - (model.day + 0.5)   # the model's last day is a day median: its middle
    out["growth_bytes_per_day"] = int(round(model.rate))
    intervals = {}
    for key, limit_bytes in limits.items():
        point, low, high = _days(model.days_to(limit_bytes), offset)
        out[f"days_to_{key}"] = point
        intervals[key] = [low, high]
    out["interval"] = intervals["warning"]
    out["intervals"] = intervals
    if not auto:
        out["days_to_autogrow"] = None
    months = env.operations.capacity_forecast_months
    h = months * 30.44 + offset
    point, low, high = (float(x) for x in model.at(h))
    out["projection"] = {"months": months, "bytes": int(point), "low_bytes": int(low), "high_bytes": int(high),
                         "percent": _r(100 * point / limit)}
    out["steps"] = [{"date": _day_iso(d), "bytes": int(size)} for d, size in model.steps]
    out["model"] = {"level_bytes": model.level, "day": model.day, "rate_bytes_per_day": model.rate,
                    "sigma_bytes_per_day": model.sigma, "days": model.n + 1, "z": model.z}
    return out


def storage_model(result: dict) -> Drift | None:
    """The storage forecast the analysis fitted (its parameters are in the result): for the stored
    forecasts and the plot, never fitted twice."""
    m = result["storage"].get("model")
    if not m:
        return None
    return Drift(level=m["level_bytes"], day=m["day"], rate=m["rate_bytes_per_day"], sigma=m["sigma_bytes_per_day"],
                 n=m["days"] - 1, z=m["z"])


def _connections(env, hist, enough: bool, now_day: float) -> dict:
    conns = hist.get("active_connections")
    limit = None
    if "max_connections" in hist:
        limit = int(hist["max_connections"].avg[-1])
    elif "max_connections" in env.parameters:
        limit = int(env.parameters["max_connections"])
    from pcdb.config.checks import sku_shape

    shape = sku_shape(env.server.sku)
    out = {"peak": None, "peak_last_week": None, "limit": limit,
           "sku_limit": azure_max_connections(shape[2] * GiB) if shape else None,
           "trend_per_week": None, "days_to_80_percent": None}
    if conns is None:
        return out
    out["peak"] = int(conns.max.max())
    recent = conns.max[conns.t >= (now_day - 7) * DAY]
    out["peak_last_week"] = int(recent.max()) if len(recent) else None
    if enough:
        whole = conns.whole_days(now_day)
        model = drift(daily(whole.t, whole.max, how="max"))
        if model is not None:
            out["trend_per_week"] = _r(model.rate * 7, 2)
            if limit:
                out["days_to_80_percent"] = _days(model.days_to(0.8 * limit), now_day - model.day - 0.5)[0]
    return out


def _utilisation(hist, metric: str, threshold: float, enough: bool, env, now_day: float) -> dict:
    series = hist.get(metric)
    out = {"p95_percent": None, "threshold_percent": threshold, "trend_per_week": None, "projected_percent": None,
           "days_to_threshold": None}
    if series is None:
        return out
    last4 = series.avg[series.t >= (now_day - 28) * DAY]
    out["p95_percent"] = _r(np.percentile(last4 if len(last4) else series.avg, 95))
    if enough:
        whole = series.whole_days(now_day)
        model = drift(daily(whole.t, whole.avg, how="p95"))
        if model is not None:
            months = env.operations.capacity_forecast_months
            out["trend_per_week"] = _r(model.rate * 7, 2)
            out["projected_percent"] = _r(max(0.0, float(model.at(months * 30.44)[0])))
            out["days_to_threshold"] = _days(model.days_to(threshold), now_day - model.day - 0.5)[0]
    return out


def _sku_advice(env, cfg: CapacitySettings, cpu: dict, memory: dict) -> dict:
    sku = env.server.sku
    out = {"current": sku, "recommendation": "keep", "to": None, "reason": "not enough history to judge"}
    if cpu["p95_percent"] is None or memory["p95_percent"] is None:
        return out
    for name, m in (("CPU", cpu), ("memory", memory)):
        projected = m["projected_percent"] if m["projected_percent"] is not None else m["p95_percent"]
        if max(m["p95_percent"], projected) >= m["threshold_percent"]:
            when = "now" if m["p95_percent"] >= m["threshold_percent"] else \
                f"within {m['days_to_threshold']:.0f} days" if m["days_to_threshold"] is not None else "within the horizon"
            return {"current": sku, "recommendation": "scale up", "to": neighbour_sku(sku, +1),
                    "reason": f"{name} p95 {m['p95_percent']} % reaches the {m['threshold_percent']:g} % threshold {when}"}
    cpu_high = max(cpu["p95_percent"], cpu["projected_percent"] or 0)
    mem_high = max(memory["p95_percent"], memory["projected_percent"] or 0)
    if cpu_high < cfg.cpu_scale_down_percent and mem_high < cfg.memory_scale_down_percent:
        smaller = neighbour_sku(sku, -1)
        if smaller:
            return {"current": sku, "recommendation": "scale down", "to": smaller,
                    "reason": f"CPU p95 {cpu['p95_percent']} % and memory p95 {memory['p95_percent']} %, now and "
                              f"projected, stay below {cfg.cpu_scale_down_percent:g} % / "
                              f"{cfg.memory_scale_down_percent:g} %: half the vCores would do"}
    return {"current": sku, "recommendation": "keep", "to": None,
            "reason": f"CPU p95 {cpu['p95_percent']} %, memory p95 {memory['p95_percent']} %: within the thresholds"}


def _wraparound(hist, enough: bool) -> dict:
    series = hist.get("xid_age")
    out = {"xid_age": None, "consumption_per_day": None, "days_to_wraparound": None, "resets": 0}
    if series is None:
        return out
    out["xid_age"] = int(series.max[-1])
    per_day = daily(series.t, series.max, how="max")
    if not enough or len(per_day.day) < 3:
        return out
    rates = np.diff(per_day.value) / np.diff(per_day.day)
    out["resets"] = int((rates < 0).sum())          # a freeze (VACUUM) lowered the age: not consumption
    growing = rates[rates > 0]
    if len(growing):
        rate = float(np.median(growing))
        out["consumption_per_day"] = int(rate)
        out["days_to_wraparound"] = _r((WRAPAROUND_AGE - out["xid_age"]) / rate)
    return out


def _tables(store: Store, start: datetime, now: datetime, top: int) -> tuple[list[dict], list[dict]]:
    times = store.snapshot_times(start, now)
    if not times:
        return [], []
    latest = store.relations_at(times[-1])
    older = [t for t in times if (times[-1] - t) >= timedelta(days=6)]
    base = store.relations_at(older[0]) if older else {}
    weeks = (times[-1] - older[0]).total_seconds() / (7 * DAY) if older else None
    rows = []
    for name, r in latest.items():
        total = r["heap_bytes"] + r["index_bytes"] + r["toast_bytes"]
        growth = None
        if weeks and name in base:
            b = base[name]
            growth = int((total - (b["heap_bytes"] + b["index_bytes"] + b["toast_bytes"])) / weeks)
        rows.append({"name": name, "bytes": total, "growth_bytes_per_week": growth, "heap_bytes": r["heap_bytes"],
                     "index_bytes": r["index_bytes"], "toast_bytes": r["toast_bytes"], "rows": r["row_count"],
                     "partitions": r["partitions"], "xid_age": r["xid_age"], "bloat_bytes": r["bloat_bytes"]})
    rows.sort(key=lambda r: (r["growth_bytes_per_week"] is None, -(r["growth_bytes_per_week"] or 0), -r["bytes"]))
    return rows[:top], store.sequences_at(times[-1])[:top]


def _logs(store: Store, start: datetime, now: datetime) -> dict | None:
    points = store.logs_between(start, now)
    if not points:
        return None
    out = {"bytes": points[-1][1], "growth_bytes_per_day": None,
           "note": "log_statement 'all' (C-6): every statement is logged"}
    if len(points) >= 2 and (points[-1][0] - points[0][0]) >= timedelta(days=1):
        out["growth_bytes_per_day"] = int((points[-1][1] - points[0][1])
                                          / ((points[-1][0] - points[0][0]).total_seconds() / DAY))
    return out


def _accuracy(store: Store, hist: dict[str, Hourly], now_day: float) -> dict:
    """How the forecasts that came due in the last 31 days did against what happened."""
    if "storage_used" not in hist:
        return {}
    actual = daily(hist["storage_used"].t, hist["storage_used"].avg)
    seen = {int(d): float(v) for d, v in zip(actual.day, actual.value)}
    out: dict[str, dict] = {}
    for metric, _made, horizon, target, value, low, high in store.forecasts_due(int(now_day) - 31, int(now_day)):
        if target not in seen or seen[target] == 0:
            continue
        got = seen[target]
        s = out.setdefault(metric, {"scored": 0, "errors": [], "inside": 0, "horizons": set()})
        s["scored"] += 1
        s["errors"].append(abs(value - got) / abs(got) * 100)
        s["inside"] += int(low <= got <= high)
        s["horizons"].add(horizon)
    return {m: {"scored": s["scored"], "mape_percent": _r(np.mean(s["errors"]), 2),
                "in_interval_percent": _r(100 * s["inside"] / s["scored"]), "horizons_days": sorted(s["horizons"])}
            for m, s in out.items()}


def _span(low, high) -> str:
    if low is None and high is None:
        return ""
    return f" ({'?' if low is None else f'{low:.0f}'}–{'>10 years' if high is None else f'{high:.0f}'})"


def verdict(result: dict) -> str:
    """The first line of the report and the notification."""
    s = result["storage"]
    if "insufficient_history" in result:
        need = result["insufficient_history"]
        return (f"no forecast yet: {need['have_days']} day(s) of storage history, {need['need_days']} needed; "
                f"storage is at {s['used_percent']} % of {_size(s['limit_bytes'])}"
                if s["used_percent"] is not None else
                f"no forecast yet: {need['have_days']} day(s) of storage history, {need['need_days']} needed")
    w = s["warning_percent"]
    if s["days_to_warning"] == 0:
        text = f"storage is at {s['used_percent']} %, past the {w:g} % warning"
    elif s["days_to_warning"] is None:
        text = (f"storage does not grow ({_size(abs(s['growth_bytes_per_day'] or 0))}/day "
                f"{'shrinking' if (s['growth_bytes_per_day'] or 0) < 0 else 'or less'}): "
                f"{w:g} % is not reached within ten years")
    else:
        low, high = s["interval"]
        text = f"storage reaches {w:g} % in {s['days_to_warning']:.0f} days{_span(low, high)}"
    nearest = min(((s[f"days_to_{k}"], label) for k, label in (("autogrow", "autogrow fires"),
                                                                ("readonly", "read-only"))
                   if s[f"days_to_{k}"] is not None), default=None)
    if nearest is not None:
        text += f"; {nearest[1]} in {nearest[0]:.0f} days"
    return text


def nearest_limit_days(result: dict) -> float | None:
    s = result["storage"]
    days = [s[k] for k in ("days_to_warning", "days_to_autogrow", "days_to_readonly") if s.get(k) is not None]
    for extra in (result["connections"].get("days_to_80_percent"), result["wraparound"].get("days_to_wraparound")):
        if extra is not None:
            days.append(extra)
    return min(days) if days else None


# -- pictures and the report ---------------------------------------------------------------------

def plots(result: dict, history: dict[str, Hourly], folder: Path, stem: str) -> list[Path]:
    """PNG plots (matplotlib, Agg) beside the report: storage with the forecast band and the limits,
    connections against max_connections, CPU and memory against their thresholds."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend, a faster import

    private_dir(folder)
    start = datetime.fromisoformat(result["as_of"]).timestamp() - result["weeks"] * 7 * DAY
    hist = {k: v.since(start) for k, v in history.items() if len(v)}
    paths = []

    def dates(days):
        return np.asarray(days, dtype="datetime64[D]")

    def save(fig, name):
        path = folder / f"{stem}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=72)
        os.chmod(path, 0o600)                      # beside the report, as private as it
        paths.append(path)

    s = result["storage"]
    if "storage_used" in hist:
        fig = Figure(figsize=(8, 3.2))
        ax = fig.subplots()
        d = daily(hist["storage_used"].t, hist["storage_used"].avg)
        ax.plot(dates(d.day), d.value / GiB, color="tab:blue", lw=1.2, label="used (daily median)")
        m = storage_model(result)
        if m is not None:
            h = np.arange(0, s["projection"]["months"] * 30.44 + 1)
            point, low, high = m.at(h)
            x = dates(m.day + h.astype(int))
            ax.plot(x, point / GiB, color="tab:orange", lw=1.2, label="forecast")
            ax.fill_between(x, low / GiB, high / GiB, color="tab:orange", alpha=0.25,
                            label=f"{s['interval_percent']:g} % interval")
        for key, colour, label in (("warning", "gold", f"{s['warning_percent']:g} % warning"),
                                   ("autogrow", "tab:purple", "autogrow fires"), ("readonly", "tab:red", "read-only")):
            ax.axhline(s["limits_bytes"][key] / GiB, color=colour, lw=0.9, ls="--", label=label)
        ax.set_ylabel("GiB")
        ax.set_title(f"storage of {result['env']}: {verdict(result)}"[:110], fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        save(fig, "storage")
    if "active_connections" in hist:
        c = hist["active_connections"]
        fig = Figure(figsize=(8, 2.8))
        ax = fig.subplots()
        peaks = daily(c.t, c.max, how="max", min_points=1)
        ax.plot(dates(peaks.day), peaks.value, color="tab:green", lw=1.2, label="daily peak")
        if result["connections"]["limit"]:
            ax.axhline(result["connections"]["limit"], color="tab:red", lw=0.9, ls="--", label="max_connections")
            ax.axhline(0.8 * result["connections"]["limit"], color="gold", lw=0.9, ls="--", label="80 %")
        ax.set_ylabel("connections")
        ax.set_title(f"connections of {result['env']}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        save(fig, "connections")
    if "cpu_percent" in hist or "memory_percent" in hist:
        fig = Figure(figsize=(8, 2.8))
        ax = fig.subplots()
        for metric, colour in (("cpu_percent", "tab:blue"), ("memory_percent", "tab:green")):
            if metric in hist:
                p = daily(hist[metric].t, hist[metric].avg, how="p95", min_points=1)
                ax.plot(dates(p.day), p.value, color=colour, lw=1.2, label=f"{metric.split('_')[0]} daily p95")
                ax.axhline(result[metric.split("_")[0]]["threshold_percent"], color=colour, lw=0.9, ls="--")
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_title(f"CPU and memory of {result['env']}: {result['sku']['recommendation']}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        save(fig, "cpu")
    return paths


def weekly_sparkline(history: dict[str, Hourly], result: dict) -> str:
    series = history.get("storage_used")
    if series is None or not len(series):
        return ""
    d = daily(series.t, series.avg, min_points=1)
    weeks = {}
    for day, value in zip(d.day, d.value):
        weeks[int(day) // 7] = value          # the week's last day
    return sparkline(list(weeks.values())[-result["weeks"]:])


def _size(value) -> str:
    """Bytes for people: 118.2 GiB, 512 MiB, -3.1 GiB."""
    if value is None:
        return "-"
    v = float(value)
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= factor:
            return f"{v / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{int(v)} B"


def _d(value) -> str:
    return "not within ten years" if value is None else f"{value:.0f} days"


def markdown(result: dict, images: dict[str, str]) -> str:
    """The report: the verdict first, then the details. ``images``: plot name -> its link
    (a file name beside the report, or a data: URL in the run's artifact)."""
    s, c = result["storage"], result["connections"]
    lines = [f"# Capacity of `{result['env']}`: {result['verdict']}", "",
             f"- As of {result['as_of']}, over {result['weeks']} weeks; settings: {result['settings']}"]
    if "insufficient_history" in result:
        need = result["insufficient_history"]
        lines.append(f"- **Not enough history for a forecast**: {need['have_days']} day(s) with storage samples, "
                     f"{need['need_days']} needed. No date is given until then.")
    lines += ["", "## Storage", "",
              f"- Used {_size(s['used_bytes'])} of {_size(s['limit_bytes'])}"
              + (f" (the sandbox's quota, standing for the spec's {_size(s['stands_for_bytes'])} disk: Azure's "
                 "limits are scaled to it)" if s.get("stands_for_bytes") else "")
              + f" ({s['used_percent']} %); growth "
              f"{_size(s['growth_bytes_per_day']) if s['growth_bytes_per_day'] is not None else '-'}/day"]
    if s["growth_bytes_per_day"] is not None:
        ints = s.get("intervals", {})
        for key, label in (("warning", f"{s['warning_percent']:g} % warning"), ("autogrow", "autogrow fires"),
                           ("readonly", "read-only (≥ 95 % or < 5 GiB free)"),
                           ("offline_growth", "the 4 TiB online-growth boundary")):
            low, high = ints.get(key, [None, None])
            lines.append(f"- {label} at {_size(s['limits_bytes'][key])}: "
                         f"{_d(s[f'days_to_{key}'])}{_span(low, high) if s[f'days_to_{key}'] else ''}")
        p = s["projection"]
        lines.append(f"- In {p['months']} months (§8.3.1): {_size(p['bytes'])} ({p['percent']} %), "
                     f"{s['interval_percent']:g} % interval {_size(p['low_bytes'])}–{_size(p['high_bytes'])}")
        for step in s["steps"]:
            lines.append(f"- One-off change on {step['date']}: {'+' if step['bytes'] > 0 else '−'}"
                         f"{_size(abs(step['bytes']))} (a bulk load or a reset; not part of the trend)")
    a = s["autogrow"]
    lines.append(f"- Autogrow: {'on' if a['enabled'] else 'off'}, fires at {_size(a['fires_at_bytes'])}; next step "
                 f"{_size(s['limit_bytes'])} → {_size(a['next_size_bytes'])}"
                 + (f" (+${a['next_step_extra_usd_per_month']}/month)" if a["next_step_extra_usd_per_month"] else "")
                 + f". {a['note']}.")
    if s["txlogs_bytes"] is not None:
        lines.append(f"- Transaction logs (WAL) take {_size(s['txlogs_bytes'])}: an inactive replication slot shows "
                     "here first")
    if s["days_without_data"]:
        lines.append(f"- {s['days_without_data']} day(s) of the window have no samples (gaps are left out, not filled)")
    if "storage" in images:
        lines += ["", f"![storage]({images['storage']})"]
    lines += ["", "## Connections", "",
              f"- Peak {c['peak']} (last week {c['peak_last_week']}) of max_connections {c['limit']} "
              f"(the SKU's default limit: {c['sku_limit']}); trend {c['trend_per_week']} per week; 80 % of "
              f"max_connections: {_d(c['days_to_80_percent'])}"]
    if "connections" in images:
        lines += ["", f"![connections]({images['connections']})"]
    lines += ["", "## CPU, memory and IOPS", ""]
    for name in ("cpu", "memory", "iops"):
        m = result[name]
        lines.append(f"- {name}: p95 {m['p95_percent']} % (threshold {m['threshold_percent']:g} %), trend "
                     f"{m['trend_per_week']} points/week, projected {m['projected_percent']} %")
    k = result["sku"]
    lines.append(f"- SKU {k['current']}: **{k['recommendation']}**{' to ' + k['to'] if k['to'] else ''} ({k['reason']})")
    if "cpu" in images:
        lines += ["", f"![cpu]({images['cpu']})"]
    w = result["wraparound"]
    lines += ["", "## Transaction IDs", "",
              f"- Oldest XID age {w['xid_age']}; consumption {w['consumption_per_day']}/day; wraparound in "
              f"{_d(w['days_to_wraparound'])} ({w['resets']} freeze reset(s) seen)"]
    lines += ["", "## Top growing tables", "", "| table | size | growth/week | heap | indexes | TOAST | rows | "
              "XID age | bloat (est.) |", "|---|---|---|---|---|---|---|---|---|"]
    for t in result["tables"]:
        lines.append(f"| {t['name']} | {_size(t['bytes'])} | {_size(t['growth_bytes_per_week'])} | "
                     f"{_size(t['heap_bytes'])} | {_size(t['index_bytes'])} | {_size(t['toast_bytes'])} | {t['rows']} | "
                     f"{t['xid_age']} | {_size(t['bloat_bytes'])} |")
    if not result["tables"]:
        lines.append("| (no snapshot yet) | | | | | | | | |")
    if result["sequences"]:
        lines += ["", "Sequences: " + ", ".join(f"{q['name']} {q['used_percent']:.4g} %" for q in result["sequences"])]
    if result["logs"]:
        lg = result["logs"]
        lines += ["", f"Server log: {_size(lg['bytes'])}, growing {_size(lg['growth_bytes_per_day'])}/day "
                      f"({lg['note']})."]
    if "forecast_accuracy" in result:
        lines += ["", "## How last month's forecasts did", "", "| metric | scored | MAPE | inside the interval |",
                  "|---|---|---|---|"]
        for metric, a in result["forecast_accuracy"].items():
            lines.append(f"| {metric} | {a['scored']} (horizons {', '.join(map(str, a['horizons_days']))} days) | "
                         f"{a['mape_percent']} % | {a['in_interval_percent']} % |")
    return "\n".join(lines) + "\n"


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
