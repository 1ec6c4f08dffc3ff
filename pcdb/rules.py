"""The health rule catalog (§6, R-MON-1..5) as the spec makes it: §6.2.2's alert rules with
their durations and channels, §6.1's system thresholds, the performance and business alarms as
the plan writes them ("> 500ms", "< 90%"), the outages that are critical at once, and
``monitoring.health.extra_rules``. Plain data, read by the spec check and by the health runbook
(pcdb.health evaluates it); no SQL and no server here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from pcdb.config.environment import Environment
from pcdb.config.monitoring import outage_rules

# The spec's metric names (§6) -> the sample's keys.
ALIASES = {"replica_lag": "replica_lag_seconds", "avg_query_time": "avg_query_time_ms",
           "buffer_cache_hit_ratio": "cache_hit_percent", "deadlock_rate": "deadlocks_per_hour",
           "slow_query_percentage": "slow_query_percent", "slow_query_count": "slow_queries_per_minute",
           "avg_processing_time": "avg_processing_seconds", "transactions_per_second": "tps",
           "active_connections": "active_connections", "kos_integration_success_rate": "kos_success_rate"}
BUSINESS = ("product_change_success_rate", "kos_success_rate", "avg_processing_seconds")
_ALARM = re.compile(r"^\s*(>=|<=|==|>|<)\s*([0-9.]+)\s*(ms|s|%|/hour|/min)?\s*$")
# Every metric a health run measures (the "metrics" of its JSON; Azure Monitor gives the same names
# on Azure): a rule on any other name would never fire, so the spec check refuses it.
MEASURED = frozenset({
    "active_connections", "avg_query_time_ms", "cache_hit_percent", "connection_failed", "cpu_percent",
    "database_bytes", "deadlocks_per_hour", "escalated_roles", "failover_event", "idle_in_transaction_seconds",
    "invalid_indexes", "iops_percent", "longest_transaction_seconds", "max_connections", "memory_percent",
    "partitions_ahead", "replica_lag_seconds", "sequence_used_percent", "slot_retained_bytes",
    "slow_queries_per_minute", "slow_query_percent", "standby_streaming", "storage_percent", "tls_days_left",
    "tps", "up", "xid_age", "writable_primary", "primary_read_only", "sync_standby", "restore_budget_percent",
    "version_support_days_left",
    *("product_change_success_rate", "kos_success_rate", "avg_processing_seconds")})
COUNTS = {"partitions_ahead", "invalid_indexes", "connection_failed", "failover_event", "up", "escalated_roles",
          "writable_primary", "primary_read_only", "sync_standby"}


@dataclass(frozen=True)
class Rule:
    name: str
    title: str
    metric: str
    operator: str
    warning: float | None
    critical: float | None
    duration: timedelta
    channels: tuple[str, ...] | None   # None: the routing of the severity reached
    source: str

    def breached(self, value: float) -> str | None:
        for level, threshold in (("critical", self.critical), ("warning", self.warning)):
            if threshold is not None and _compare(value, self.operator, threshold):
                return level
        return None

    def threshold(self, level: str) -> float:
        return self.critical if level == "critical" and self.critical is not None else self.warning  # type: ignore[return-value]

    def cleared(self, value: float, level: str, hysteresis: float) -> bool:
        """Back on the good side of ``level``'s threshold by the hysteresis margin."""
        threshold = self.threshold(level)
        margin = abs(threshold) * hysteresis / 100
        if self.metric in COUNTS:
            margin = 0.0      # a count (partitions, invalid indexes) is either past the threshold or not
        if self.operator in (">", ">="):
            return value <= threshold - margin
        if self.operator in ("<", "<="):
            return value >= threshold + margin
        return value != threshold


def _compare(value: float, operator: str, threshold: float) -> bool:
    return {">": value > threshold, "<": value < threshold, ">=": value >= threshold, "<=": value <= threshold,
            "==": value == threshold}[operator]


def parse_alarm(text: str, where: str) -> tuple[str, float]:
    """"> 500ms", "< 90%", "> 5/hour" -> (operator, value) in the metric's own unit."""
    match = _ALARM.match(text)
    if not match:
        raise ValueError(f"{where}: {text!r} is not '<operator> <number>[ms|s|%|/hour|/min]'")
    return match.group(1), float(match.group(2))


AZURE_SOURCE = {"cpu_percent": "cpu_percent", "memory_percent": "memory_percent",
                "iops_percent": "disk_iops_consumed_percentage", "storage_percent": "storage_percent",
                "active_connections": "active_connections", "replica_lag_seconds": "physical_replication_delay_in_seconds",
                "connection_failed": "is_db_alive"}


def catalog(env: Environment) -> list[Rule]:
    """Every rule, once: §6.2.2's rule for a metric wins over §6.1's threshold of the same metric."""
    m = env.monitoring
    rules: dict[str, Rule] = {}
    by_metric: set[str] = set()

    def source(metric: str) -> str:
        return f"azure-monitor:{AZURE_SOURCE[metric]} + sql" if metric in AZURE_SOURCE else "sql"

    for r in m.alert_rules:
        metric = ALIASES.get(r.condition.metric, r.condition.metric)
        level = {"critical": ("critical", None)}.get(r.level, ("warning", None))[0]
        rules[r.name] = Rule(r.name, r.title, metric, r.condition.operator,
                             r.condition.value if level == "warning" else None,
                             r.condition.value if level == "critical" else None,
                             r.duration, tuple(r.channels), source(metric))
        by_metric.add(metric)
    for t in m.system_metrics:
        metric = ALIASES.get(t.metric, t.metric)
        if metric in by_metric:
            continue
        rules[t.metric.replace("_", "-")] = Rule(
            t.metric.replace("_", "-"), f"{t.metric} {t.operator} {t.value:g}{t.unit}", metric, t.operator,
            t.value if t.level != "critical" else None, t.value if t.level == "critical" else None,
            m.health.alarm_duration, None, source(metric))
        by_metric.add(metric)
    for p in m.performance_targets:
        metric = ALIASES.get(p.metric, p.metric)
        operator, value = parse_alarm(p.alarm, f"monitoring.performance_targets {p.metric}.alarm")
        rules[p.metric.replace("_", "-")] = Rule(p.metric.replace("_", "-"), f"{p.metric} {p.alarm}", metric,
                                                 operator, value, None, m.health.alarm_duration, None, "sql")
    for b in m.business_metrics:
        metric = ALIASES.get(b.metric, b.metric)
        op_w, warning = parse_alarm(b.warning, f"monitoring.business_metrics {b.metric}.warning")
        _, critical = parse_alarm(b.critical, f"monitoring.business_metrics {b.metric}.critical")
        rules[b.metric.replace("_", "-")] = Rule(b.metric.replace("_", "-"), f"{b.metric} (§6.1.3)", metric, op_w,
                                                 warning, critical, m.health.alarm_duration, None, "sql (service tables)")
    for x in [*outage_rules(), *m.health.extra_rules]:
        rules[x.name] = Rule(x.name, x.title, x.metric, x.operator, x.warning, x.critical, x.duration,
                             tuple(x.channels) if x.channels else None, "sql")
    return [r for name, r in rules.items() if name not in m.health.disabled_rules]
