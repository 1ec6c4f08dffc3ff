"""Operations (§8, §9): incident severities and the P1 timeline, maintenance, capacity, cost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from pcdb.config.monitoring import WRITES_DOWN
from pcdb.config.types import Cron, Duration, Model, Size


class Severity(Model):
    level: Literal["P1", "P2", "P3", "P4"]
    description: str
    response: Duration


class CostComponent(Model):
    """One row of §9.1.1's monthly cost table."""

    component: str
    category: Literal["compute", "storage", "backup_storage", "network", "monitoring", "extended_support"] = Field(
        description="extended_support: Azure's charge for a major past its standard support (its retail price), "
                    "counted only on the days pcdb's version table says Azure bills it")
    monthly_usd: float = Field(ge=0)
    spec: str = ""
    resource: Literal["server", "replica"] | None = Field(
        None, description="the Azure resource this row prices (the primary server with its storage and HA, or the "
                          "read replica): what `pcdb plan` adds when it creates one")


class Cost(Model):
    monthly_budget_usd: float = Field(gt=0)
    alert_monthly_usd: float = Field(gt=0)
    alert_increase_percent: float = Field(gt=0)
    price_table: list[CostComponent] = Field(default_factory=list, description="§9.1.1: what each component costs "
                                             "a month; the sandbox's cost model (Azure reports its own)")
    reserved_instance_saving_percent: float = Field(30, ge=0, lt=100, description="§9.1.2: what a reserved "
                                                    "instance saves on compute")
    storage_usd_per_gib_month: float | None = Field(None, gt=0, description="provisioned storage's price, to "
                                                    "value what the partition retention freed; unset: bytes only")


class MaintenanceSpec(Model):
    """The monthly maintenance runbook (§8.3.1, R-OPS-3): when it runs and its thresholds."""

    cron: Cron = Field("0 5 1-7 * 0", description="first Sunday of the month, 05:00 business time: after "
                                                 "the 02:00-04:00 backup window and the 04:30 verification")
    archive_min_retention_months: int = Field(
        12, ge=2, description="the archive policy: no KOS-log partition is archived and dropped younger than this")
    lock_timeout: Duration = Field(timedelta(seconds=2), description="every DDL statement gives up after this "
                                   "rather than queue behind the application; the step is retried next run")
    analyze_modified_fraction: float = Field(0.10, gt=0, le=1, description="ANALYZE when this share of rows "
                                             "changed since the last analyze")
    vacuum_dead_fraction: float = Field(0.20, gt=0, le=1, description="plain VACUUM above this dead-tuple ratio")
    min_rows: int = Field(1000, ge=0, description="tables with fewer changed/dead rows are left to autovacuum")
    unused_index_min_stats_days: int = Field(30, ge=0, description="idx_scan = 0 counts only when the "
                                             "statistics are at least this old")
    keep_plan_indexes: bool = Field(True, description="never report the plan's own §3.2.1 indexes as unused")
    reindex_bloat_percent: float = Field(50, gt=0, le=100, description="REINDEX CONCURRENTLY above this "
                                         "estimated bloat")
    reindex_min_size: Size = Field(10 * 2**20, description="smaller indexes are never rebuilt")
    slow_query_regression_percent: float = Field(50, gt=0, description="a statement whose mean time grew by "
                                                 "more than this since last month is flagged")


class CapacitySettings(Model):
    """The weekly capacity analysis (§8.1.2, §8.3.1): its schedule, how much history it reads and
    how it judges. Every field has a default; an environment without ``operations.capacity``
    runs with them and its report says so."""

    cron: Cron = Field("0 8 * * 1", description="Monday 08:00 business time")
    weeks: int = Field(13, ge=2, le=57, description="weeks of history analysed (Azure Monitor keeps 93 days; "
                       "the sandbox's health store keeps hourly figures 400 days)")
    min_history_days: int = Field(14, ge=8, le=93, description="fewer days of history: no forecast, never a "
                                  "guessed date; the report says how much is needed")
    interval_percent: float = Field(90, gt=50, lt=100, description="the prediction interval of every forecast")
    top_tables: int = Field(10, ge=1, le=100, description="the top growing tables listed")
    cpu_scale_down_percent: float = Field(30, gt=0, lt=100, description="CPU p95 below this (now and projected) "
                                          "with memory below memory_scale_down_percent: recommend a smaller SKU")
    memory_scale_down_percent: float = Field(50, gt=0, lt=100)
    alert_within_days: int = Field(90, ge=1, description="a limit reached sooner than this makes the "
                                   "notification a warning (otherwise info)")
    storage_price_usd_per_gib_month: float | None = Field(None, gt=0, description="the provisioned storage's "
                                                          "price, to cost the next autogrow step; unset: not costed")


class IncidentStep(Model):
    """One step of the P1 timeline (§8.2.2)."""

    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    owner: str = Field(description="the team that confirms it (a key of operations.incident.teams)")
    within: Duration | None = Field(None, description="its time, counted from the step it follows")
    after: str | None = Field(None, description="the step it follows (default: the one before it)")
    every: Duration | None = Field(None, description="a recurring step (status updates)")
    condition: str = Field("", description="when it applies; a conditional step may be confirmed as not needed")

    @model_validator(mode="after")
    def _timed(self) -> IncidentStep:
        if (self.within is None) == (self.every is None):
            raise ValueError(f"step {self.key}: give either within (a deadline) or every (a recurring step)")
        return self


def _p1_steps() -> list[IncidentStep]:
    """§8.2.2's P1 timeline: each step's time counts from the step it follows."""
    m = timedelta(minutes=1)
    return [
        IncidentStep(key="triage", name="assess and confirm the outage", owner="ops team", within=5 * m),
        IncidentStep(key="call", name="management and developers called", owner="ops team", within=timedelta(0)),
        IncidentStep(key="analysis", name="first analysis of the cause", owner="DBA", within=10 * m),
        IncidentStep(key="ha_check", name="automatic HA failover checked (Zone Redundant HA)", owner="DBA",
                     within=2 * m),
        IncidentStep(key="manual_failover", name="manual failover decided", owner="DBA", within=5 * m,
                     condition="only when the automatic failover failed (pcdb failover zone --real)"),
        IncidentStep(key="region_switch", name="switched to the read replica", owner="DBA", within=10 * m,
                     condition="only when the whole primary region is down (pcdb failover region --real)"),
        IncidentStep(key="customer_notice", name="customer notice sent", owner="CS team", within=30 * m,
                     after="triage"),
        IncidentStep(key="status_update", name="status update", owner="ops team", every=30 * m),
    ]


class IncidentSettings(Model):
    """Who answers an incident (§8.2, R-OPS-4): the teams with the people who may confirm their
    steps, and the P1 timeline of §8.2.2 (its deadlines may be shortened, e.g. in a test)."""

    teams: dict[str, list[str]] = Field(default_factory=dict,
                                        description="team -> the people (on-call ids) who confirm its steps")
    responder: str = Field("ops team", description="the team told when an incident is not acknowledged in time")
    p1_steps: list[IncidentStep] = Field(default_factory=_p1_steps)
    auto_open: dict[str, Literal["P1", "P2", "P3", "P4"]] = Field(
        default_factory=lambda: {rule: "P1" for rule in WRITES_DOWN},
        description="health rule -> the severity of the incident its critical alert opens; any other critical "
                    "alert opens a P2. The rules of one outage (writes down: no connection, no writable "
                    "primary, a read-only primary) share one open incident")

    @model_validator(mode="after")
    def _owners_known(self) -> IncidentSettings:
        keys = [s.key for s in self.p1_steps]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"p1_steps: key {', '.join(twice)} given twice")
        for step in self.p1_steps:
            if self.teams and step.owner not in self.teams:
                raise ValueError(f"p1_steps {step.key}: owner {step.owner!r} is not a team of operations.incident.teams "
                                 f"({', '.join(self.teams)})")
            if step.after and step.after not in keys[:keys.index(step.key)]:
                raise ValueError(f"p1_steps {step.key}: after {step.after!r} names no earlier step")
        if self.teams and self.responder not in self.teams:
            raise ValueError(f"responder {self.responder!r} is not a team of operations.incident.teams")
        return self

    def teams_of(self, person: str) -> set[str]:
        return {team for team, members in self.teams.items() if person in members}


class Operations(Model):
    incident_severities: list[Severity]
    log_partition_retention_months: int = Field(gt=0)
    capacity_forecast_months: int = Field(gt=0)
    cost: Cost
    maintenance: MaintenanceSpec = Field(default_factory=MaintenanceSpec)
    capacity: CapacitySettings | None = Field(None, description="the weekly capacity analysis; absent: defaults")
    incident: IncidentSettings = Field(default_factory=IncidentSettings)

    @model_validator(mode="after")
    def _retention_within_archive_policy(self) -> Operations:
        floor = self.maintenance.archive_min_retention_months
        if self.log_partition_retention_months < floor:
            raise ValueError(
                f"log_partition_retention_months is {self.log_partition_retention_months}, shorter than the archive "
                f"policy allows (operations.maintenance.archive_min_retention_months: {floor}); KOS-log partitions "
                f"are kept at least {floor} months: raise the retention, or lower the policy if the client changed it")
        return self
