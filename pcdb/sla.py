"""Monthly availability against the plan's targets (§1, §2.2): 99.9 % for the service, 99.95 %
for the zone-redundant server, with the error budget and its burn rate.

A minute is up when every availability sample in it said so: the health runbook's ``up`` (one a
minute) on the sandbox, Azure Monitor's ``is_db_alive`` (every 20 s, its minimum per minute) on
Azure. A minute without any sample is *unobserved*: it is reported apart, never counted as up;
the worst case (every unobserved minute down) is given beside the observed availability.

The month is the calendar month in the service's time zone. The error budget is what the target
allows over the whole month; the alert fires when the downtime so far plus the last 24 hours' rate
over the rest of the month would spend more than the budget.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from pcdb import health
from pcdb.config import Environment
from pcdb.targets.base import Telemetry

PORT = Telemetry   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)

MINUTE = 60
RECENT = timedelta(hours=24)       # the window the burn rate is measured over


def month_bounds(env: Environment, month: str | None, now: datetime) -> tuple[datetime, datetime, str]:
    """(start, end) in UTC of the calendar month ``YYYY-MM`` (default: this month) in the service's
    time zone, and its name."""
    tz = ZoneInfo(env.service.timezone)
    local = now.astimezone(tz)
    if month:
        try:
            year, number = (int(x) for x in month.split("-"))
            first = datetime(year, number, 1, tzinfo=tz)
        except ValueError:
            raise ValueError(f"--month {month!r}: give a month as YYYY-MM, e.g. {local:%Y-%m}") from None
    else:
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return first.astimezone(timezone.utc), following.astimezone(timezone.utc), f"{first:%Y-%m}"


def minutes_from_store(db: sqlite3.Connection, start: datetime, end: datetime) -> dict[int, float]:
    """Minute (epoch minutes) -> 1.0 up / 0.0 down, from the health runbook's ``up`` samples."""
    out: dict[int, float] = {}
    for at, value in db.execute("SELECT at, value FROM samples WHERE metric = 'up' AND at >= ? AND at < ?",
                                (start.isoformat(), end.isoformat())):
        minute = int(datetime.fromisoformat(at).timestamp() // MINUTE)
        out[minute] = min(out.get(minute, 1.0), 1.0 if value >= 1 else 0.0)
    return out


def minutes_from_points(points: list[tuple[datetime, float]]) -> dict[int, float]:
    """The same from a platform's per-minute minimum (Azure's is_db_alive)."""
    out: dict[int, float] = {}
    for at, value in points:
        minute = int(at.timestamp() // MINUTE)
        out[minute] = min(out.get(minute, 1.0), 1.0 if value >= 1 else 0.0)
    return out


def _outages(down: list[int]) -> list[dict]:
    spans, first, last = [], None, None
    for m in sorted(down):
        if last is not None and m == last + 1:
            last = m
            continue
        if first is not None:
            spans.append((first, last))
        first = last = m
    if first is not None:
        spans.append((first, last))
    return [{"start": datetime.fromtimestamp(a * MINUTE, timezone.utc).isoformat(), "minutes": b - a + 1}
            for a, b in spans]


def report(env: Environment, minutes: dict[int, float], start: datetime, end: datetime, name: str,
           now: datetime) -> dict:
    """The month's availability, budgets and burn (up to ``now`` for the current month)."""
    first, last = int(start.timestamp() // MINUTE), int(end.timestamp() // MINUTE)
    upto = min(last, int(now.timestamp() // MINUTE))
    total = last - first
    elapsed = max(0, upto - first)
    seen = {m: v for m, v in minutes.items() if first <= m < upto}
    down = [m for m, v in seen.items() if v < 1]
    unobserved = elapsed - len(seen)
    observed_pct = 100.0 * (1 - len(down) / len(seen)) if seen else None
    worst_pct = 100.0 * (1 - (len(down) + unobserved) / elapsed) if elapsed else None
    recent_from = max(first, upto - int(RECENT.total_seconds() // MINUTE))
    recent = [v for m, v in seen.items() if m >= recent_from]
    recent_rate = (sum(1 for v in recent if v < 1) / len(recent)) if recent else 0.0
    targets = {"service": env.service.availability_target_percent}
    if env.server.high_availability.mode == "ZoneRedundant":
        targets["zone_redundant"] = env.server.high_availability.sla_percent
    out = {"month": name, "complete": upto >= last, "minutes_in_month": total, "minutes_elapsed": elapsed,
           "minutes_observed": len(seen), "minutes_down": len(down), "minutes_unobserved": unobserved,
           "availability_percent": round(observed_pct, 4) if observed_pct is not None else None,
           "worst_case_percent": round(worst_pct, 4) if worst_pct is not None else None,
           "outages": _outages(down), "recent_down_rate": round(recent_rate, 4), "targets": {}}
    alerts = []
    for key, target in targets.items():
        budget = total * (1 - target / 100)
        spent = len(down)
        projected = spent + recent_rate * (total - elapsed)
        exhausted_in = None
        if spent < budget and recent_rate > 0:
            exhausted_in = round((budget - spent) / recent_rate / 60, 1)          # hours at the recent rate
        entry = {"target_percent": target, "budget_minutes": round(budget, 1), "spent_minutes": spent,
                 "left_minutes": round(budget - spent, 1), "met": observed_pct is not None and observed_pct >= target
                 and (out["complete"] or projected <= budget),
                 "burn_rate": round((spent / budget) / (elapsed / total), 2) if budget and elapsed else None,
                 "projected_minutes": round(projected, 1), "exhausted_in_hours": exhausted_in}
        entry["alert"] = None
        if spent >= budget:
            entry["alert"] = f"the {target:g} % budget of {budget:.1f} min is spent ({spent} min down)"
        elif not out["complete"] and projected > budget:
            entry["alert"] = (f"at the last 24 h's rate the {target:g} % budget ({budget - spent:.1f} min left) is "
                              f"spent in {exhausted_in} h, before the month ends")
        if entry["alert"]:
            alerts.append(entry["alert"])
        out["targets"][key] = entry
    out["alerts"] = alerts
    return out


def markdown(env: Environment, r: dict) -> str:
    lines = [f"# Availability of `{env.name}` in {r['month']}: {r['availability_percent']} %"
             + ("" if r["complete"] else " so far"), "",
             f"- {r['minutes_down']} minute(s) down of {r['minutes_observed']} observed; {r['minutes_unobserved']} "
             f"unobserved (worst case {r['worst_case_percent']} %); {r['minutes_elapsed']} of {r['minutes_in_month']} "
             "minutes of the month elapsed", "",
             "| target | % | budget (min) | spent | left | burn rate | met | alert |", "|---|---|---|---|---|---|---|---|"]
    for key, t in r["targets"].items():
        lines.append(f"| {key} | {t['target_percent']} | {t['budget_minutes']} | {t['spent_minutes']} | "
                     f"{t['left_minutes']} | {t['burn_rate']} | {'yes' if t['met'] else 'NO'} | {t['alert'] or '-'} |")
    if r["outages"]:
        lines += ["", "Outages:", *(f"- {o['start']}: {o['minutes']} min" for o in r["outages"])]
    return "\n".join(lines) + "\n"


def measure(target: Telemetry, env: Environment, month: str | None, now: datetime) -> dict:
    """One month's availability report (read only): the platform's own per-minute samples where
    it keeps them (Azure's is_db_alive), else the health runbook's ``up`` samples."""
    start, end, name = month_bounds(env, month, now)
    points = target.availability_samples(start, min(end, now))
    if points is None:
        store = health.store_for(env)
        try:
            minutes = minutes_from_store(store.db, start, end)
        finally:
            store.close()
    else:
        minutes = minutes_from_points(points)
    return report(env, minutes, start, end, name, now)
