"""Monitoring (§6): thresholds, performance targets, business metrics, alert rules, Azure metric
alerts, and the health runbook's settings with the rules it always has (policy defaults).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from pcdb.config.types import Duration, Model

Operator = Literal[">", "<", ">=", "<=", "=="]


Level = Literal["info", "warning", "critical"]


class Threshold(Model):
    metric: str
    operator: Operator
    value: float
    unit: str = ""
    level: Level


class PerformanceTarget(Model):
    metric: str
    target: str
    alarm: str


class BusinessMetric(Model):
    metric: str
    target: str
    warning: str
    critical: str
    measurement: str
    probe: str | None = Field(None, description="the metric's own SQL instead of pcdb's: exactly one read-only SELECT "
                              "returning one number; $1 is the start of the business window (timestamptz). It runs "
                              "on the primary in a READ ONLY transaction under a 5 s statement_timeout")

    @field_validator("probe")
    @classmethod
    def _read_only(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from pcdb.sqlcheck import read_only_select

        problem = read_only_select(value)
        if problem:
            raise ValueError(problem)
        return value


class Condition(Model):
    metric: str
    operator: Operator
    value: float
    unit: str = ""


class AlertRule(Model):
    name: str
    title: str
    condition: Condition
    duration: Duration
    level: Level
    channels: list[str]


class AzureMetricAlert(Model):
    name: str
    description: str
    severity: int = Field(ge=0, le=4)
    scope: Literal["server", "replica"] = "server"
    metric: str
    aggregation: Literal["Average", "Maximum", "Minimum", "Total", "Count"]
    operator: Literal["GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual", "Equals"]
    threshold: float
    window: Duration
    frequency: Duration


class HealthRule(Model):
    """A health rule of one's own: what the best monitors check and the plan forgot."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    title: str
    metric: str
    operator: Operator
    warning: float | None = None
    critical: float | None = None
    duration: Duration = timedelta(0)
    channels: list[str] | None = Field(None, description="default: the routing of the severity it reached")

    @model_validator(mode="after")
    def _a_threshold(self) -> HealthRule:
        if self.warning is None and self.critical is None:
            raise ValueError(f"rule {self.name}: give a warning or a critical threshold (or both)")
        return self


def _best_monitor_rules() -> list[HealthRule]:
    gib = 2**30
    return [HealthRule(name="xid-wraparound", title="transaction ID age (wraparound)", metric="xid_age",
                       operator=">", warning=1.0e9, critical=1.5e9, duration=timedelta(minutes=5)),
            HealthRule(name="long-transaction", title="a transaction open for long", metric="longest_transaction_seconds",
                       operator=">", warning=3600, critical=4 * 3600, duration=timedelta(minutes=5)),
            HealthRule(name="idle-in-transaction", title="a session idle in a transaction",
                       metric="idle_in_transaction_seconds", operator=">", warning=600, duration=timedelta(minutes=2)),
            HealthRule(name="slot-retaining-wal", title="a replication slot retains WAL",
                       metric="slot_retained_bytes", operator=">", warning=1 * gib, critical=10 * gib,
                       duration=timedelta(minutes=30)),
            HealthRule(name="invalid-index", title="an invalid index", metric="invalid_indexes", operator=">",
                       warning=0, duration=timedelta(hours=1)),
            HealthRule(name="sequence-exhaustion", title="a sequence near its maximum", metric="sequence_used_percent",
                       operator=">", warning=75, critical=90, duration=timedelta(0)),
            HealthRule(name="tls-certificate-expiry", title="the server's TLS certificate expires soon",
                       metric="tls_days_left", operator="<", warning=30, critical=7, duration=timedelta(0)),
            HealthRule(name="kos-log-partitions", title="fewer than 2 future monthly partitions of the KOS log",
                       metric="partitions_ahead", operator="<", critical=2, duration=timedelta(0)),
            HealthRule(name="restore-test-budget", title="the restore test, projected at the database's size, "
                       "no longer fits backup.verification.window: switch to sampling or widen the window",
                       metric="restore_budget_percent", operator=">", warning=100, duration=timedelta(0)),
            HealthRule(name="version-support", title="the server's PostgreSQL major leaves Azure's standard support "
                       "within 90 days (critical once it has): plan the major upgrade, docs/operations/upgrade.md",
                       metric="version_support_days_left", operator="<=", warning=90, critical=-1,
                       duration=timedelta(0)),
            HealthRule(name="role-escalation", title="a role with more power than the spec gives (SUPERUSER, "
                       "CREATEROLE, REPLICATION, BYPASSRLS or a membership such as pg_execute_server_program)",
                       metric="escalated_roles", operator=">", critical=0, duration=timedelta(0))]


# The health rules that say the application cannot write: one outage, one incident (§8.2: P1).
WRITES_DOWN = ("database-connection-failure", "no-writable-primary", "read-only-primary")


def outage_rules() -> list[HealthRule]:
    """The outages the application feels at once: always in the catalog (a spec's extra_rules do
    not replace them; disabled_rules can), critical in the first run that sees them."""
    return [HealthRule(name="no-writable-primary", title="no writable primary: writes are down (the HA failover "
                       "promotes the synchronous standby: the sandbox's supervisor within sandbox.auto_failover_after, "
                       "Azure within 60-120 s; if nothing answers after that, fail over by hand)",
                       metric="writable_primary", operator="<", critical=1, duration=timedelta(0)),
            HealthRule(name="read-only-primary", title="the primary is read-only: the application cannot write "
                       "(storage at 95 % on Azure and on the sandbox's guard; free space or grow the disk)",
                       metric="primary_read_only", operator=">", critical=0, duration=timedelta(0)),
            HealthRule(name="no-synchronous-standby", title="the primary runs without its synchronous copy: RPO 0 is "
                       "not held (the standby is rejoined or copied afresh by the supervisor; on Azure, HA is not "
                       "Healthy)", metric="sync_standby", operator="<", critical=1, duration=timedelta(0))]


class HealthSettings(Model):
    """How the health runbook evaluates the rules (R-MON-1..5)."""

    every: Duration = Field(timedelta(minutes=1), description="how often the health deployment runs")
    reminder_every: Duration = Field(timedelta(hours=4), description="a firing alert is notified again this often")
    hysteresis_percent: float = Field(5, ge=0, le=50, description="an alert resolves only once its value is this "
                                      "far back on the good side of the threshold")
    business_window: Duration = Field(timedelta(hours=1), description="the business rates are over this window")
    alarm_duration: Duration = Field(timedelta(minutes=5), description="how long a §6.1 threshold, performance or "
                                     "business alarm must hold before it fires (§6.2.2 rules have their own)")
    dead_man_after: Duration = Field(timedelta(minutes=5), description="no health report for this long: critical")
    history_minutes: Duration = Field(timedelta(days=14), description="per-minute samples are kept this long; "
                                      "hourly averages and maxima for 400 days (the capacity analysis)")
    disabled_rules: list[str] = Field(default_factory=list, description="rule names not evaluated here")
    extra_rules: list[HealthRule] = Field(default_factory=_best_monitor_rules)


class Monitoring(Model):
    system_metrics: list[Threshold]
    performance_targets: list[PerformanceTarget]
    business_metrics: list[BusinessMetric]
    alert_rules: list[AlertRule]
    azure_metric_alerts: list[AzureMetricAlert]
    dashboard: dict[str, list[str]]
    health: HealthSettings = Field(default_factory=HealthSettings)
