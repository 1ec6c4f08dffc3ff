"""DR drills (R-DR-1..3), triggered by hand: zone failover, region failover, data corruption.

Safety rails: on a production environment a drill needs confirm=True and a recorded approval;
at most one drill or mutating runbook runs per environment at a time (a Prefect global
concurrency limit); leftovers of an interrupted drill are removed first; the report (artifact +
file) gives target vs measured RTO/RPO and a timeline.
"""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger
from prefect.runtime import flow_run

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import Decider, approve_plan, flow, gates, name_run, refusable, runbook_context, stepped, topology
from pcdb import drills
from pcdb.config import Environment, load_environment
from pcdb.context import RunbookContext
from pcdb.errors import PcdbError
from pcdb.steps import table as steps_table


@flow(name="dr-drill", **HOOKS)
@alive
@refusable
def dr_drill(scenario: Literal["zone", "region", "corruption"], env: str = "local", spec_path: str | None = None,
             mode: Literal["planned", "forced"] = "forced", confirm: bool = False, yes: bool = False,
             stall_replica: bool = False, wait_seconds: float = 0) -> dict:
    """Run one DR drill and report measured vs target RTO/RPO.

    Args:
        scenario: zone (HA failover), region (promote the replica), corruption (PITR).
        mode: planned or forced failover (zone drill).
        confirm: required on production: "I know this drill fails over production".
        yes: give the approvals and step confirmations by flag (sandbox only), for unattended runs.
        stall_replica: region drill with the replica's link cut first (loss expected).
        wait_seconds: how long to wait for the environment's drill slot before failing.
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
    """
    spec = load_environment(spec_path or env)
    if spec.production and not confirm:
        raise PcdbError(f"{spec.name} is production: a drill needs confirm=True and an approval")
    if yes and spec.production:
        raise PcdbError("approvals by flag are for the sandbox only; production drills wait for a signed decision")
    ctx = runbook_context(spec)
    decider = Decider(spec, yes)
    with evidence(spec, ctx, "dr-drill") as ev, mutating_slot(spec.name, f"{scenario} drill", wait_seconds):
        ev.decisions = decider.collected
        result = _run(scenario, spec, ctx, mode, decider, stall_replica)
        ev.report = result["report"]
        ev.figures = {k: result[k] for k in ("scenario", "mode", "rto_seconds", "rpo_rows_lost", "rpo_seconds",
                                              "rows_in_doubt", "rows_acknowledged", "met", "topology_restored")}
        return result


def _run(scenario, spec: Environment, ctx: RunbookContext, mode: str, decider: Decider, stall: bool) -> dict:
    if spec.production:
        plan = {"scenario": scenario, "mode": mode, "environment": spec.name, "topology": topology(ctx)}
        approve_plan(spec, decider, "drill-approval", plan,
                     f"Approve the {scenario} drill ({mode}) on production {spec.name}: it fails over production",
                     replan=lambda: {**plan, "topology": topology(ctx)})
    decide, confirm = gates(spec, ctx, decider, "drill")
    password = ctx.admin_password()
    with stepped() as step:           # each step a task run; the decisions pause the flow between them
        removed = drills.cleanup(ctx.target, spec, password, confirm, step=step)   # logs what it finished
        if scenario == "zone":
            # On production the signed drill approval above is this decision: its plan holds the
            # topology, made again right before acting.
            result = drills.zone_drill(ctx.target, spec, password, mode, decide=None if spec.production else decide,
                                       step=step)
        elif scenario == "corruption":
            result = drills.corruption_drill(ctx.target, spec, password, step=step)
        else:
            result = drills.region_drill(ctx.target, spec, password, decide, confirm, stall,
                                         drill_id=str(flow_run.get_id() or "drill"), step=step)
    result.steps = step.as_dicts()
    get_run_logger().info("%s drill: RTO %s s (target %s), %s acknowledged rows lost, %s in doubt, met=%s",
                          scenario, result.rto_seconds, result.target_rto_seconds, result.rpo_rows_lost,
                          result.rows_in_doubt, result.met)
    result.notes = [*(f"cleaned up: {r}" for r in removed), *decider.notes, *result.notes]
    text = _report(spec, result)
    path = publish_report(spec, f"drill-{scenario}-{spec.name}", text, "drill report")
    result.report = str(path)
    name_run(f"{scenario} drill · {result.mode} · {result.rpo_rows_lost} lost · "
             + (f"RTO {result.rto_seconds:.1f} s" if result.rto_seconds is not None else "not recovered")
             + ("" if result.met else " · BREACHED"))
    level = "critical" if scenario != "corruption" else "warning"
    notify(spec, level, f"pcdb {scenario} drill on {spec.name}: {'met' if result.met else 'BREACHED'}",
           f"RTO {result.rto_seconds}s (target {result.target_rto_seconds}s), {result.rpo_rows_lost} acknowledged "
           f"rows lost, topology restored: {result.topology_restored}. Report: {path}")
    return result.as_dict()


def _report(spec: Environment, r) -> str:
    lines = [f"# DR drill: {r.scenario} ({r.mode}) on `{spec.name}`", "",
             "| measure | target | measured | |", "|---|---|---|---|",
             f"| RTO | {r.target_rto_seconds:.0f} s | {r.rto_seconds if r.rto_seconds is not None else 'not recovered'} s | "
             f"{'met' if r.rto_seconds is not None and r.rto_seconds <= r.target_rto_seconds else 'BREACHED'} |",
             f"| RPO | {'-' if r.target_rpo_seconds is None else f'{r.target_rpo_seconds:.0f} s'} | "
             f"{r.rpo_rows_lost} acknowledged rows lost ({r.rpo_seconds:.3f} s of writes) | "
             f"{'met' if r.target_rpo_seconds is None or r.rpo_seconds <= r.target_rpo_seconds else 'BREACHED'} |",
             "", f"- Rows acknowledged: {r.rows_acknowledged}; in doubt (commit raised, may exist): {r.rows_in_doubt}",
             f"- Topology restored afterwards: {r.topology_restored}", f"- Overall: {'MET' if r.met else 'BREACHED'}",
             ledger_link(spec),
             "", "## Timeline", ""]
    lines += [f"- {at} — {action}" for at, action in r.timeline]
    lines += ["", "## Steps", "", *steps_table(r.steps)]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"
