"""The runbooks' commands: verify-backups, drill, failover, failback, recover, maintain, checklist,
capacity, sla, cost.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import (
    EnvOption,
    EnvsOption,
    JsonOption,
    app,
    err,
    flow_result,
    ledger_row,
    out,
    parse_time,
    run_flow,
    run_runbook,
    spec_args,
    use_orchestrator,
    user_errors,
)
from pcdb import clock
from pcdb.config import Environment, load_environment
from pcdb.errors import PcdbError
from pcdb.orchestrator import ServerConfig, server_config


@app.command("verify-backups")
@user_errors
def verify_backups_command(env: EnvsOption = ["local"],  # noqa: B006 - typer's list default
                           restore_test: Annotated[bool, typer.Option(
                               "--restore-test", help="also restore and prove the latest backup")] = False,
                           as_json: JsonOption = False) -> None:
    """Run the backup-verification runbook (daily checks; with --restore-test a real restore).

    Several --env: a fleet, verified in parallel through each environment's work pool."""
    specs = [load_environment(e) for e in env]
    config = use_orchestrator(specs[0])
    if len(specs) > 1:
        _verify_fleet(specs, env, config, restore_test, as_json)
        return
    from flows.backup_verification import verify_backups

    state = run_flow(lambda: verify_backups(**spec_args(env[0]), restore=restore_test, return_state=True),
                      config, env[0])
    result = flow_result(state, "backup verification failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        out.print(f"{key}: {value}")


def _verify_fleet(specs: list[Environment], args: list[str], config: ServerConfig | None, restore: bool,
                  as_json: bool) -> None:
    if config is None:
        raise PcdbError("a fleet is verified through the work pools of its environments: start the server "
                        f"first (`pcdb server up {' '.join('--env ' + a for a in args)}`)")
    if len({server_config(s) for s in specs}) > 1:
        raise PcdbError("these environments report to different Prefect servers; verify them one by one")
    from flows import service

    name = "restore-test" if restore else "backup-verification"
    runs = {service.start_deployment_run("backup-verification", f"{name}-{s.name}"): s for s in specs}
    for run_id, s in runs.items():
        err.print(f"{s.name}: {config.run_url(run_id)}", highlight=False, soft_wrap=True)
    finished = service.wait_for_runs(list(runs))
    outcome = {}
    for run_id, (state, message) in finished.items():
        spec = runs[run_id]
        row = ledger_row(spec, run_id) or {}
        outcome[spec.name] = {"state": state, "run_id": run_id, "message": message,
                              "report": row.get("report_path"), "figures": row.get("figures")}
    if as_json:
        print(json.dumps(outcome, indent=2, default=str))
    else:
        for name_, item in outcome.items():
            out.print(f"{name_}: {item['state']} ({item['report'] or item['message']})")
    failed = [n for n, item in outcome.items() if item["state"] != "Completed"]
    if failed:
        raise PcdbError(f"backup verification did not complete on {', '.join(failed)}")


@app.command("drill")
@user_errors
def drill_command(scenario: Annotated[str, typer.Argument(help="zone | region | corruption")],
                  env: EnvOption = "local",
                  mode: Annotated[str, typer.Option(help="planned | forced (zone drill)")] = "forced",
                  yes: Annotated[bool, typer.Option("--yes", help="give approvals by flag (sandbox only)")] = False,
                  confirm: Annotated[bool, typer.Option("--confirm", help="required on production")] = False,
                  stall_replica: Annotated[bool, typer.Option(
                      "--stall-replica", help="region drill: cut the replica's link first")] = False,
                  as_json: JsonOption = False) -> None:
    """Run a DR drill (zone failover, region failover, data corruption) and print measured RTO/RPO."""
    if scenario not in ("zone", "region", "corruption"):
        raise PcdbError(f"unknown drill {scenario!r}: use zone, region or corruption")
    if mode not in ("planned", "forced"):
        raise PcdbError(f"--mode {mode!r}: use planned or forced")
    config = use_orchestrator(load_environment(env))
    from flows.dr_drill import dr_drill

    state = run_flow(lambda: dr_drill(scenario=scenario, **spec_args(env), mode=mode, confirm=confirm, yes=yes,
                                       stall_replica=stall_replica, return_state=True), config, env)
    result = flow_result(state, "the drill failed", load_environment(env).install.approval.timeout)
    keys = ("scenario", "mode", "rto_seconds", "rpo_rows_lost", "rpo_seconds", "rows_acknowledged", "rows_in_doubt",
            "target_rto_seconds", "target_rpo_seconds", "met", "topology_restored", "report")
    if as_json:
        print(json.dumps({k: result[k] for k in keys} | {"timeline": result["timeline"]}, indent=2, default=str))
        return
    for key in keys:
        out.print(f"{key}: {result[key]}")


_FAILOVER_KEYS = ("kind", "changed", "application", "serving", "outage_began", "recovery_seconds", "target_rto_seconds",
                  "met", "report")


def _failover(scenario: str, env: str, yes: bool, outage_began: str | None, as_json: bool) -> None:
    when = parse_time(outage_began, "--outage-began")
    config = use_orchestrator(load_environment(env))
    from flows.failover import failover

    state = run_flow(lambda: failover(scenario=scenario, **spec_args(env), yes=yes, outage_began=when,
                                       return_state=True), config, env)
    result = flow_result(state, f"the {scenario} failover failed", load_environment(env).install.approval.timeout)
    if as_json:
        print(json.dumps({k: result[k] for k in _FAILOVER_KEYS} | {"timeline": result["timeline"]}, indent=2))
        return
    for key in _FAILOVER_KEYS:
        out.print(f"{key}: {result[key]}")


@app.command("failover")
@user_errors
def failover_command(scenario: Annotated[str, typer.Argument(help="zone | region")],
                     env: EnvOption = "local",
                     real: Annotated[bool, typer.Option("--real", help="really fail over; nothing is undone")] = False,
                     yes: Annotated[bool, typer.Option("--yes", help="decide and confirm by flag (sandbox only)")] = False,
                     outage_began: Annotated[str | None, typer.Option(
                         "--outage-began", help="when the outage began, ISO 8601 (the recovery time counts from it)")] = None,
                     as_json: JsonOption = False) -> None:
    """A real failover (§8.2.2): zone forces the HA standby up; region promotes the replica in the other
    region and points the application at it. Rehearse with `pcdb drill` instead."""
    if scenario not in ("zone", "region"):
        raise PcdbError(f"unknown failover {scenario!r}: use zone or region")
    if not real:
        raise PcdbError(f"`pcdb failover {scenario}` changes production's topology for real and undoes nothing: "
                        f"add --real to do it, or rehearse with `pcdb drill {scenario}`")
    _failover(scenario, env, yes, outage_began, as_json)


@app.command("failback")
@user_errors
def failback_command(scenario: Annotated[str, typer.Argument(help="region")],
                     env: EnvOption = "local",
                     yes: Annotated[bool, typer.Option("--yes", help="approve and confirm by flag (sandbox only)")] = False,
                     as_json: JsonOption = False) -> None:
    """Back to the primary region after a real region failover, planned and approved.

    Sandbox: the primary region's servers copied from the promoted replica, then a planned switch back.

    Azure: the former primary deleted (its own approval), a new server as a replica, Azure's switchover, Phase 7.

    A run killed anywhere is finished by the next (docs/operations/failover.md)."""
    if scenario != "region":
        raise PcdbError(f"unknown failback {scenario!r}: use region")
    _failover("failback", env, yes, None, as_json)


@app.command("recover")
@user_errors
def recover_command(env: EnvOption = "local",
                    to: Annotated[str, typer.Option("--to", help="the moment before the corruption, ISO 8601 with a "
                                                                 "time zone")] = "",
                    tables: Annotated[str | None, typer.Option(
                        "--tables", help="the affected tables, comma-separated (default: every table with a key)")] = None,
                    where: Annotated[str | None, typer.Option(
                        "--where", help="one condition bounding the affected rows, e.g. \"billed_on >= '2026-11-01'\": "
                                        "columns, constants, comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL, casts, "
                                        "date functions; never statements")] = None,
                    yes: Annotated[bool, typer.Option("--yes", help="approve the replay by flag (sandbox only)")] = False,
                    as_json: JsonOption = False) -> None:
    """Data-corruption recovery (§12.2.2): restore to a new server at --to, compare, put back exactly
    the damaged rows under approval, verify."""
    if not to:
        raise PcdbError("--to is required: the moment before the corruption, e.g. 2026-11-27T14:05:00+09:00")
    when = parse_time(to, "--to")
    if where is not None:
        from pcdb import predicate

        predicate.parse(where)        # refused here, before a run starts or anything is made
    names = [t.strip() for t in tables.split(",") if t.strip()] if tables else None
    spec = load_environment(env)
    config = use_orchestrator(spec)
    from flows.recover import recover

    state = run_flow(lambda: recover(to=when, **spec_args(env), tables=names, where=where, yes=yes,
                                      return_state=True), config, env)
    result = flow_result(state, "the recovery failed", spec.install.approval.timeout)
    keys = ("to", "restored_server", "tables", "skipped", "put_back", "export", "verified", "recovery_seconds",
            "target_rto_seconds", "met", "report")
    if as_json:
        print(json.dumps({k: result[k] for k in keys} | {"timeline": result["timeline"]}, indent=2))
        return
    for key in keys:
        out.print(f"{key}: {result[key]}")
    if not result["verified"]:
        raise typer.Exit(2)


@app.command("maintain")
@user_errors
def maintain_command(env: EnvOption = "local",
                     only: Annotated[str | None, typer.Option(
                         "--only", help="some of: partitions, statistics, indexes, slow_queries, accounts, hygiene "
                                        "(comma-separated)")] = None,
                     dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be done; change nothing")] = False,
                     as_json: JsonOption = False) -> None:
    """Run the monthly maintenance (§8.3.1): partitions kept ahead, expired ones archived, proved,
    detached and dropped; statistics; indexes; slow queries; accounts; hygiene. Exits 2 when a
    step stopped on a problem (an archive that does not prove, a partition name that does not parse)."""
    from pcdb.maintenance import check_steps

    steps = check_steps([s.strip() for s in only.split(",") if s.strip()] if only else None)
    config = use_orchestrator(load_environment(env))
    from flows.maintenance import maintenance

    state = run_flow(lambda: maintenance(**spec_args(env), only=steps, dry_run=dry_run, return_state=True),
                      config, env)
    result = flow_result(state, "the maintenance failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        parts = result["partitions"]
        archived = [a["name"] for a in parts["archived"]] or "none"
        out.print(f"partitions: created {parts['created'] or 'none'}, archived {archived}, "
                  f"dropped {parts['dropped'] or 'none'}; {parts['ahead_months']} month(s) ready ahead", highlight=False)
        out.print(f"statistics: analyzed {len(result['statistics']['analyzed'])}, vacuumed "
                  f"{len(result['statistics']['vacuumed'])}; indexes: {len(result['indexes']['unused'])} unused, "
                  f"{len(result['indexes']['invalid'])} invalid, reindexed {result['indexes']['reindexed'] or 'none'}",
                  highlight=False)
        for key in ("problems", "deferred", "recommended"):
            for line in result[key]:
                out.print(f"{key[:-1] if key != 'deferred' else key}: {line}", highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["problems"]:
        raise typer.Exit(2)


@app.command("checklist")
@user_errors
def checklist_command(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """The daily checklist (§8.1.1): each item checked from data. Exits 2 when an item failed."""
    from flows.daily_checklist import daily_checklist

    result = run_runbook(env, daily_checklist, "the daily checklist failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        for item in result["items"]:
            out.print(f"{item['result'].upper():5} {item['name']}: {item['evidence']}", highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["status"] == "failed":
        raise typer.Exit(2)


@app.command("capacity")
@user_errors
def capacity_command(env: EnvOption = "local",
                     weeks: Annotated[int | None, typer.Option("--weeks", min=2, max=57, help="weeks of history "
                                                               "analysed (default operations.capacity.weeks, 13)")] = None,
                     as_json: JsonOption = False) -> None:
    """The weekly capacity analysis (§8.1.2, §8.3.1): when storage, connections, CPU, memory and
    transaction IDs reach their limits, the top growing tables, plots and a report. Exits 0 also
    when there is too little history for a forecast (the output says how much is needed)."""
    from flows.capacity import capacity_analysis

    result = run_runbook(env, capacity_analysis, "the capacity analysis failed", weeks=weeks)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    out.print(result["verdict"], highlight=False, markup=False)
    s, c, k = result["storage"], result["connections"], result["sku"]
    out.print(f"storage: {s['used_bytes']} of {s['limit_bytes']} bytes ({s['used_percent']} %), growth "
              f"{s['growth_bytes_per_day']} bytes/day; days to warning {s['days_to_warning']}, autogrow "
              f"{s['days_to_autogrow']}, read-only {s['days_to_readonly']}", highlight=False, markup=False)
    out.print(f"connections: peak {c['peak']} of {c['limit']}, trend {c['trend_per_week']}/week", highlight=False,
              markup=False)
    out.print(f"sku: {k['recommendation']}{' to ' + k['to'] if k['to'] else ''} ({k['reason']})", highlight=False,
              markup=False)
    for t in result["tables"][:5]:
        out.print(f"table {t['name']}: {t['bytes']} bytes, {t['growth_bytes_per_week']} bytes/week", highlight=False,
                  markup=False)
    out.print(f"storage by week: {result['sparkline']}", highlight=False)
    out.print(f"report: {result['report']}", highlight=False)


@app.command("sla")
@user_errors
def sla_command(env: EnvOption = "local",
                month: Annotated[str | None, typer.Option("--month", help="YYYY-MM (default: this month so far)")] = None,
                as_json: JsonOption = False) -> None:
    """Availability of a month against the plan's 99.9 % (service) and 99.95 % (zone-redundant),
    with the error budget left. Exits 2 when a target is missed or the budget would be spent
    before the month ends."""
    spec = load_environment(env)
    if month is not None:
        from pcdb import sla

        try:
            sla.month_bounds(spec, month, clock.now())
        except ValueError as exc:
            raise PcdbError(str(exc)) from None
    from flows.sla import sla_report

    result = run_runbook(env, sla_report, "the availability report failed", month=month)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        out.print(f"{result['month']}: {result['availability_percent']} % available ({result['minutes_down']} min down, "
                  f"{result['minutes_unobserved']} unobserved)", highlight=False, markup=False)
        for key, t in result["targets"].items():
            out.print(f"{key} {t['target_percent']} %: budget {t['budget_minutes']} min, left {t['left_minutes']}, "
                      f"{'met' if t['met'] else 'NOT met'}" + (f" — {t['alert']}" if t["alert"] else ""),
                      highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["alerts"] or not all(t["met"] for t in result["targets"].values()):
        raise typer.Exit(2)


@app.command("cost")
@user_errors
def cost_command(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """The cost review (§9): this month so far and projected, per component, against the budget and
    last month. Exits 2 on an alert ($1,600 a month, a 20 % rise: operations.cost)."""
    from flows.cost import cost_review

    result = run_runbook(env, cost_review, "the cost review failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        out.print(f"{result['month']}: ${result['spent_usd']:,.2f} so far, ${result['projected_usd'] or 0:,.0f} "
                  f"projected, budget ${result['budget_usd']:,.0f}; trend {result['trend']}", highlight=False,
                  markup=False)
        for alert in result["alerts"]:
            out.print(f"ALERT: {alert}", highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["alerts"]:
        raise typer.Exit(2)


@app.command("upgrade")
@user_errors
def upgrade_command(to: Annotated[int, typer.Option("--to", help="the PostgreSQL major to upgrade to, e.g. 15")],
                    env: EnvOption = "local",
                    rehearse: Annotated[bool, typer.Option(
                        "--rehearse", help="the prechecks and the rehearsal only: nothing of the environment "
                                           "changes")] = False,
                    without_rehearsal: Annotated[bool, typer.Option(
                        "--without-rehearsal", help="production only: upgrade although no rehearsal of the same "
                                                    "upgrade passed in the last 7 days; the decision you sign says "
                                                    "so")] = False,
                    as_json: JsonOption = False) -> None:
    """The major version upgrade (#27): prechecks (each failing one says what to do; nothing
    changes), a rehearsal on a copy restored from the latest backup and upgraded (the sandbox:
    pg_upgrade; Azure: its own in-place upgrade of the copy), then the servers themselves, under a
    probe writer on the application's path, and Phase 7's checks after. On production the upgrade
    relies on a passing rehearsal from the last 7 days (`--rehearse` makes one) and waits for a
    signed decision."""
    from flows.upgrade import upgrade_major

    if rehearse and without_rehearsal:
        raise PcdbError("--rehearse and --without-rehearsal exclude each other: rehearse, or upgrade without one")
    result = run_runbook(env, upgrade_major, f"the upgrade to {to} failed", to=to, rehearse_only=rehearse,
                         without_rehearsal=without_rehearsal)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for c in result["prechecks"]:
        out.print(f"{'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['evidence']}", highlight=False, markup=False)
    r = result["rehearsal"]
    if r and "run_id" in r:
        out.print(f"rehearsal relied on: run {r['run_id']} ({r['ended_at']}), {r['from_version']} to "
                  f"{r['to_version']} in {r['seconds']} s", highlight=False, markup=False)
    elif r:
        out.print(f"rehearsal: {r['from_version']} to {r['to_version']} passed in {r['seconds']} s (upgrade "
                  f"{r['pg_upgrade_seconds']}, ANALYZE {r['analyze_seconds']} s)", highlight=False, markup=False)
    done = result.get("upgrade")
    if done:
        out.print(f"upgraded: {done['from']} to {done['to']}, downtime through the application's path "
                  f"{done['downtime_seconds']} s, acknowledged rows lost {done['probe_rows_lost']}; rollback: "
                  f"{done['rollback']}", highlight=False, markup=False)
        failed = [c["name"] for c in result.get("checks", []) if not c["passed"]]
        out.print(f"Phase 7's checks: {len(result.get('checks', [])) - len(failed)}/{len(result.get('checks', []))} "
                  "passed", highlight=False, markup=False)
    out.print(f"report: {result['report']}", highlight=False)
