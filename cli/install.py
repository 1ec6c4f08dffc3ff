"""`pcdb install` and `pcdb plan`: the install runbook, and plan-before-apply on Azure.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cli.common import (
    EnvOption,
    JsonOption,
    app,
    deployed_run,
    flow_result,
    out,
    phase_list,
    print_changes,
    run_flow,
    spec_args,
    use_orchestrator,
    user_errors,
)
from cli.config import _print_warnings
from pcdb.changes import Change
from pcdb.config import load_environment
from pcdb.errors import PcdbError


@app.command("install")
@user_errors
def install_command(env: EnvOption = "local",
                    phases: Annotated[str | None, typer.Option(help="only these phases, e.g. 3,4,5")] = None,
                    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan, change nothing")] = False,
                    deployed: Annotated[bool, typer.Option("--deployed", help="run through the environment's deployment "
                                                           "on its worker (needs `pcdb server up`)")] = False,
                    remove_unknown_roles: Annotated[bool, typer.Option(
                        "--remove-unknown-roles", help="drop roles the spec does not name (what they own goes to "
                                                       "the admin); without it they are reported and Phase 7 fails")] = False,
                    reverify: Annotated[bool, typer.Option(
                        "--reverify", help="repeat Phase 7's failover and PITR checks even when the last install "
                                           "passed them on this same configuration")] = False,
                    as_json: JsonOption = False) -> None:
    """Run the install runbook (Phases 1-8) as a Prefect flow and print each phase's outcome.

    --json prints {status, phases: [{number, name, state, changes, seconds}], report, checks, approval}."""
    spec = load_environment(env)  # a bad spec fails here, before Prefect starts
    selected = phase_list(phases)
    config = use_orchestrator(spec)
    if deployed:
        result = deployed_run(spec, env, config, "install", f"install-{spec.name}",
                               {"phases": selected, "dry_run": dry_run, "remove_unknown_roles": remove_unknown_roles,
                                "reverify": reverify})
    else:
        from flows.install import install  # the CLI is the one pcdb module that may import flows/

        state = run_flow(lambda: install(**spec_args(env), phases=selected, dry_run=dry_run,
                                          remove_unknown_roles=remove_unknown_roles, reverify=reverify,
                                          return_state=True), config, env, spec)
        try:
            result = flow_result(state, "the install failed; see the Prefect run for details",
                                  spec.install.approval.timeout)
        except PcdbError as exc:
            if as_json:
                print(json.dumps({"status": "failed", "error": str(exc), "phases": [], "report": None}, indent=2))
            raise
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "plan" or dry_run}, indent=2, default=str))
        return
    for phase in result.get("phases") or []:
        out.print(f"Phase {phase['number']} · {phase['name']}: {phase['summary']} ({phase['seconds']:.1f}s)")
    if result.get("report"):
        out.print(f"handover report: {result['report']}")
    if result.get("dry_run"):
        print_changes([Change(c["resource"], c["name"], c["action"],
                               {k: (v["current"], v["desired"]) for k, v in c["diff"].items()}, tuple(c["notes"]))
                        for c in result["plan"]], False)


@app.command("plan")
@user_errors
def plan_command(env: EnvOption = "prod",
                 assume_empty: Annotated[bool, typer.Option(
                     "--assume-empty", help="plan against an empty subscription (no credentials needed)")] = False,
                 as_json: JsonOption = False) -> None:
    """Show what the install would create, change (current -> desired) or leave on Azure, and what
    Azure does when it applies it: which changes restart the server, which it refuses in place
    (with what to do), and the monthly cost delta from the spec's price table. Reads only."""
    spec = load_environment(env)
    if spec.target != "azure":
        raise PcdbError(f"environment {spec.name!r} targets {spec.target}; plan reads Azure (use --env prod), "
                        "or `pcdb install --env local --dry-run` for the sandbox")
    _print_warnings(spec)
    from pcdb.azure.desired import desired_resources
    from pcdb.azure.plan import make_plan

    if assume_empty:
        items = make_plan(desired_resources(spec))
    else:  # reads the live subscription: DefaultAzureCredential, subscription from its secret source
        from flows.runbook import runbook_context

        target = runbook_context(spec).target
        items = make_plan(target.desired(), target.reconciler.read)
    from pcdb.azure.plan import cost_delta

    cost = cost_delta(items, spec.operations.cost.price_table, spec.operations.cost.storage_usd_per_gib_month)
    if as_json:
        print(json.dumps({
            "environment": spec.name, "assumed_empty": assume_empty,
            "items": [{k: v for k, v in i.as_dict().items() if k != "id"} for i in items],
            "restarts": [f"{i.type} {i.name}" for i in items if i.restarts],
            "refused": [{"resource": f"{i.type} {i.name}", "why": list(i.notes)} for i in items if i.action == "conflict"],
            "cost": cost}, indent=2, ensure_ascii=False, default=str))
        return
    title = f"plan for {spec.name}" + (" (assuming an empty subscription)" if assume_empty else "")
    table = Table("phase", "type", "name", "action", "what Azure does", title=title)
    phases = {d.id: d.phase for d in desired_resources(spec)}
    for item in items:
        said = [*item.effects, *(item.notes if item.action == "conflict" else ())]
        changed = ", ".join(f"{k.rsplit('.', 1)[-1]} {v['current']} -> {v['desired']}" for k, v in item.changes.items())
        table.add_row(str(phases[item.id]), item.type, item.name, item.action + (f" ({changed})" if changed else ""),
                      "; ".join(said))
    out.print(table)
    counts = {a: sum(i.action == a for i in items) for a in ("create", "update", "conflict", "unchanged")}
    out.print(", ".join(f"{n} to {a}" for a, n in counts.items() if n))
    restarts = [f"{i.type} {i.name}" for i in items if i.restarts]
    if restarts:
        out.print(f"RESTARTS: {', '.join(restarts)}", highlight=False, markup=False)
    refused = [f"{i.type} {i.name}" for i in items if i.action == "conflict"]
    if refused:
        out.print(f"REFUSED until resolved (Azure cannot change them in place): {', '.join(refused)}",
                  highlight=False, markup=False)
    delta = cost["monthly_delta_usd"]
    out.print(("monthly cost: " + (f"+${delta:,.2f}" if delta is not None else
                                   f"+${cost['known_usd']:,.2f} known, and unknown: {'; '.join(cost['unknown'])}"))
              + "".join(f"\n  {line['what']}: +${line['usd']:,.2f} ({line['source']})" for line in cost["lines"]),
              highlight=False, markup=False)


@app.command("preflight")
@user_errors
def preflight_command(env: EnvOption = "prod", as_json: JsonOption = False) -> None:
    """Check, reading only, what the install needs before Phase 1, each failing check with what to
    do. On Azure: the resource providers, the region's capabilities (SKU, zone-redundant HA in the
    spec's zones, storage, version, the replica's region), the vCore quota, the server names, the
    VNet, subnet delegation and private DNS zone, the principal's permissions, the budget's scope,
    and every secret (Key Vault included). On the sandbox: the server programs and the secrets.
    `pcdb install` runs the same checks first and stops before Phase 1 when one fails.

    --json prints {ok, checks: [{name, ok, detail, fix}]}; the exit status is 1 when a check fails."""
    spec = load_environment(env)
    use_orchestrator(spec)
    from flows.runbook import runbook_context
    from pcdb.install import preflight
    from pcdb.preflight import as_json as preflight_json

    checks = preflight(runbook_context(spec))
    result = preflight_json(checks)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        table = Table("check", "", "found", "what to do", title=f"preflight for {spec.name} ({spec.target})")
        for c in checks:
            table.add_row(c.name, "ok" if c.ok else "FAILED", c.detail, "" if c.ok else c.fix)
        out.print(table)
        failed = [c.name for c in checks if not c.ok]
        out.print(f"{len(checks) - len(failed)} of {len(checks)} checks pass" +
                  (f"; FAILED: {', '.join(failed)} (the install would stop before Phase 1)" if failed else ""),
                  highlight=False, markup=False)
    if not result["ok"]:
        raise typer.Exit(1)
