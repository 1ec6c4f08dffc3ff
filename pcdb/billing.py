"""What things cost, as a target reports it (§9.1): one component's cost on one day, the §9.2.1
category of an Azure meter, and the spec's price table spread over days (the sandbox's costs).
Data only: the cost runbook (pcdb.cost) reviews it.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta

from pcdb import versions
from pcdb.config import Environment


@dataclass(frozen=True)
class DayCost:
    """What one component cost on one day (UTC), in USD."""

    day: date
    component: str
    category: str
    usd: float


def meter_category(category: str, sub: str) -> str:
    """§9.2.1's category of an Azure meter (Cost Management's MeterCategory / MeterSubCategory)."""
    mc, sc = category.lower(), sub.lower()
    if "postgresql" in mc and "extended support" in sc:
        return "extended_support"
    if "postgresql" in mc:
        return "backup_storage" if "backup" in sc else "storage" if "storage" in sc else "compute"
    if any(w in mc for w in ("bandwidth", "network", "private link", "dns")):
        return "network"
    if any(w in mc for w in ("log analytics", "monitor", "insight")):
        return "monitoring"
    if "storage" in mc:
        return "storage"                   # the evidence archive's account
    return "other"


def model_costs(env: Environment, start: date, end: date) -> list[DayCost]:
    """The spec's price table as daily costs from ``start`` to ``end`` (exclusive): each row's
    monthly price over the days of its month; an extended_support row only on the days Azure bills
    the spec's major for it."""
    out = []
    day = start
    while day < end:
        days = calendar.monthrange(day.year, day.month)[1]
        billed = versions.support(env.server.version, day).billed_extended
        out += [DayCost(day, c.component, c.category, c.monthly_usd / days) for c in env.operations.cost.price_table
                if c.category != "extended_support" or billed]
        day += timedelta(days=1)
    return out
