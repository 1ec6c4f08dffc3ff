"""The runbook registry: every runbook once, with what the rest of pcdb derives from it.

For each runbook: its name (the Prefect flow's), its flow entry point, its CLI command, its
deployments (schedule, fixed parameters), its default run limit, whether it mutates (and so takes
the environment's slot, one at a time), and its approval policy. From it come ``prefect.yaml``
(rendered by :func:`prefect_yaml`; a test fails when the file differs), the run limits' defaults
and their automations (``orchestrator.run_limits`` may only name registered runbooks), and the
checks that every flow is registered, every command exists and every mutating flow takes the
slot (tests/unit/test_registry.py). Data only: no Prefect, no imports of the flows.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

# The {{ $PCDB_* }} values a deployment takes from the environment's spec (flows/service.py).
SPEC_VALUES = {
    "PCDB_ENV": "the environment's name",
    "PCDB_TIMEZONE": "service.timezone",
    "PCDB_DAILY_DAYS": "every weekday but backup.verification.restore_test_weekday",
    "PCDB_RESTORE_DAY": "backup.verification.restore_test_weekday",
    "PCDB_MAINTENANCE_CRON": "operations.maintenance.cron",
    "PCDB_HEALTH_CRON": "monitoring.health.every",
    "PCDB_CAPACITY_CRON": "operations.capacity.cron",
}


@dataclass(frozen=True)
class Deployment:
    """One deployment of a runbook per environment (``<name>-<env>`` in work pool ``pcdb-<env>``)."""

    name: str
    description: str
    parameters: dict = field(default_factory=dict)   # fixed values; the rest are the flow's defaults
    cron: str | None = None                            # None: by hand only
    day_or: bool = True                                # cron's day-of-month and day-of-week: OR (False: AND)


@dataclass(frozen=True)
class Runbook:
    name: str                                   # the Prefect flow's name, the ledger's "flow"
    flow: str                                   # entry point, module:function
    command: str                                # the CLI command that runs it
    tag: str
    deployments: tuple[Deployment, ...]
    run_limit: timedelta                        # a run Running longer is cancelled and reported
    mutating: bool                              # takes the environment's slot: one at a time
    approval: Literal["none", "production"]     # production: a signed decision before what it changes
    ui: str = ""                                # what a person does in the UI, in a line


RUNBOOKS: tuple[Runbook, ...] = (
    Runbook("install", "flows.install:install", "pcdb install", "install", (
        Deployment("install", "Phases 1-8 of the installation plan. Manual; production pauses for the §13.2 "
                              "approvals before changing anything."),),
        timedelta(hours=12), mutating=True, approval="production",
        ui="Custom run: phases, dry run; production waits for the approvers' signed decisions"),
    Runbook("backup-verification", "flows.backup_verification:verify_backups", "pcdb verify-backups", "backup", (
        Deployment("backup-verification", "Daily backup checks at 04:30, after the 02:00-04:00 backup window "
                                          "(R-BAK-2). On the restore-test day the restore-test deployment runs "
                                          "them instead, with the restore.",
                   {"restore": False}, "30 4 * * {{ $PCDB_DAILY_DAYS }}"),
        Deployment("restore-test", "Weekly restore test (§8.1.1) with the daily checks, on the spec's "
                                   "backup.verification.restore_test_weekday.",
                   {"restore": True}, "30 4 * * {{ $PCDB_RESTORE_DAY }}")),
        timedelta(hours=5), mutating=True, approval="none", ui="Quick run"),
    Runbook("maintenance", "flows.maintenance:maintenance", "pcdb maintain", "maintenance", (
        Deployment("maintenance", "Monthly maintenance (§8.3.1, R-OPS-3), the first Sunday early morning by "
                                  "default (operations.maintenance.cron), after the backup window. Production "
                                  "pauses for an approval of the plan.",
                   cron="{{ $PCDB_MAINTENANCE_CRON }}", day_or=False),),
        timedelta(hours=8), mutating=True, approval="production", ui="Custom run: only, dry run"),
    Runbook("health", "flows.health:health_check", "pcdb health", "health", (
        Deployment("health", "Health monitoring (§6, R-MON-1..5), every minute by default "
                             "(monitoring.health.every; 0 = by hand). Read only; alert state, history and "
                             "silences in the orchestrator's home.", cron="{{ $PCDB_HEALTH_CRON }}"),),
        timedelta(minutes=5), mutating=False, approval="none", ui="Quick run"),
    Runbook("daily-checklist", "flows.daily_checklist:daily_checklist", "pcdb checklist", "checklist", (
        Deployment("daily-checklist", "The daily checklist (§8.1.1, R-OPS-1) at 09:00 business time, each item "
                                      "checked from data; report, artifact, ledger.", cron="0 9 * * *"),),
        timedelta(minutes=30), mutating=False, approval="none", ui="Quick run"),
    Runbook("capacity", "flows.capacity:capacity_analysis", "pcdb capacity", "capacity", (
        Deployment("capacity", "Weekly capacity analysis (§8.1.2, §8.3.1), Monday 08:00 business time by default "
                               "(operations.capacity.cron). Read only; snapshots and forecasts in the "
                               "orchestrator's home; report with plots.", cron="{{ $PCDB_CAPACITY_CRON }}"),),
        timedelta(hours=1), mutating=False, approval="none", ui="Quick run, or Custom run: weeks"),
    Runbook("sla", "flows.sla:sla_report", "pcdb sla", "sla", (
        Deployment("sla", "Availability of the month so far against 99.9 % (service) and 99.95 % "
                          "(zone-redundant), daily at 09:10 business time; the run of the 1st closes the "
                          "previous month. Read only.", cron="10 9 * * *"),),
        timedelta(minutes=30), mutating=False, approval="none", ui="Custom run: month"),
    Runbook("cost", "flows.cost:cost_review", "pcdb cost", "cost", (
        Deployment("cost", "The cost review (§9) daily at 09:20 business time, the month so far against the "
                           "budget and the alerts of §9.2.1. Read only.", cron="20 9 * * *"),),
        timedelta(minutes=30), mutating=False, approval="none", ui="Quick run"),
    Runbook("dr-drill", "flows.dr_drill:dr_drill", "pcdb drill", "drill", (
        Deployment("dr-drill", "DR drills (zone, region, corruption), by hand only. Choose the scenario and mode "
                               "in the form; production waits for an approver.", {"scenario": "zone"}),),
        timedelta(hours=6), mutating=True, approval="production",
        ui="Custom run: scenario and mode; the decision in the run page's resume form"),
    Runbook("incident", "flows.incident:incident", "pcdb incident", "incident", (
        Deployment("incident", "An incident (§8.2): follows the P1 timeline of §8.2.2 until closed. Opened by "
                               "`pcdb incident open` or by a critical health alert; confirmations come with "
                               "`pcdb incident ack|step|close`."),),
        timedelta(days=7), mutating=False, approval="production",
        ui="the open incident's run page: its timeline and its confirmations"),
    Runbook("failover", "flows.failover:failover", "pcdb failover", "failover", (
        Deployment("failover", "A real zone or region failover, or the failback (§8.2.2 steps 5-6, §12.2.1). "
                               "By hand only; nothing is undone automatically.", {"scenario": "zone"}),),
        timedelta(hours=2), mutating=True, approval="production",
        ui="Custom run: scenario; the decision and the teams' confirmations in the run page"),
    Runbook("recover", "flows.recover:recover", "pcdb recover", "recover", (
        Deployment("recover", "Data-corruption recovery (§12.2.2): restore to a new server at a time, compare, "
                              "put back the damaged rows under approval."),),
        timedelta(hours=6), mutating=True, approval="production",
        ui="Custom run: to, tables, where; the approval in the run page"),
    Runbook("upgrade", "flows.upgrade:upgrade_major", "pcdb upgrade", "upgrade", (
        Deployment("upgrade", "The major version upgrade (#27), by hand only: prechecks, a rehearsal on a copy "
                              "restored from the latest backup and upgraded (sandbox: pg_upgrade; Azure: its own "
                              "in-place upgrade), then (rehearse_only off) the servers themselves under a probe "
                              "writer, and Phase 7 after. Production: a passing rehearsal of the last 7 days and a "
                              "signed decision.", {"rehearse_only": True}),),
        timedelta(hours=6), mutating=True, approval="production",
        ui="Custom run: to, rehearse_only, without_rehearsal; the decision in the run page"),
)

BY_NAME = {r.name: r for r in RUNBOOKS}
NAMES = tuple(BY_NAME)


def run_limits() -> dict[str, timedelta]:
    """Every runbook's default run limit (``orchestrator.run_limits`` overrides some)."""
    return {r.name: r.run_limit for r in RUNBOOKS}


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def prefect_yaml() -> str:
    """pcdb/prefect.yaml as the registry makes it (the file is this, written out)."""
    lines = [
        "# Deployments of the pcdb runbooks: one set per environment, each in the environment's own work",
        "# pool (pcdb-<env>). Generated from the runbook registry (pcdb/runbooks.py): edit the registry and",
        "# run `python -m pcdb.runbooks --write`. `pcdb server up --env ENV` registers them with the values",
        "# below filled in from the environment's spec ({{ $PCDB_* }}); the same file works with Prefect's",
        "# own CLI when those variables are exported, e.g. for prod (restore test on Sunday):",
        "#   PCDB_ENV=prod PCDB_TIMEZONE=Asia/Seoul PCDB_RESTORE_DAY=0 PCDB_DAILY_DAYS=1,2,3,4,5,6 \\",
        '#   PCDB_MAINTENANCE_CRON="0 5 1-7 * 0" PCDB_HEALTH_CRON="* * * * *" PCDB_CAPACITY_CRON="0 8 * * 1" \\',
        "#     prefect --no-prompt deploy --all",
        "# Entry points are module paths, so a wheel install works as well as a checkout.",
        "name: pcdb",
        "prefect-version: 3.9.1",
        "",
        "deployments:",
    ]
    for runbook in RUNBOOKS:
        for d in runbook.deployments:
            params = ", ".join(['env: "{{ $PCDB_ENV }}"', *(f"{k}: {_yaml_value(v)}" for k, v in d.parameters.items())])
            description = json.dumps(d.description, ensure_ascii=False)     # a JSON string is YAML
            lines += [f'  - name: "{d.name}-{{{{ $PCDB_ENV }}}}"',
                      f"    description: {description}",
                      f"    entrypoint: {runbook.flow}",
                      f"    parameters: {{{params}}}",
                      f"    tags: [pcdb, {runbook.tag}]"]
            if d.cron:
                lines += ["    schedules:", f'      - cron: "{d.cron}"', '        timezone: "{{ $PCDB_TIMEZONE }}"']
                if not d.day_or:
                    lines.append("        day_or: false")
            lines += ['    work_pool: {name: "pcdb-{{ $PCDB_ENV }}"}', ""]
    return "\n".join(lines)


if __name__ == "__main__":   # python -m pcdb.runbooks [--write]: prefect.yaml from the registry
    from pcdb.paths import PREFECT_FILE

    text = prefect_yaml()
    if "--write" in sys.argv[1:]:
        PREFECT_FILE.write_text(text)
        print(f"written {PREFECT_FILE}")
    else:
        print(text, end="")
