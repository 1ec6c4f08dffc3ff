"""The install runbook: Phases 1-8 of the installation schedule (REQUIREMENTS §6) as one flow.

Each phase is a task run named for the UI ("Phase 3 · PostgreSQL server") with its own page,
state, logs and table of what changed; each step is a task nested in its phase, retried only for
transient failures (tasks/install.py). The phases were subflows until 2026-12: a subflow costs
about ten API calls the run waits for, a task run none, which was 1.9 s of a 9 s sandbox install
(docs/benchmarks.md, P1). Every step is idempotent: a re-run of a finished install reports every
phase unchanged, and a run that failed in phase N, run again, passes through 1..N-1 without
changes and continues at N. Production waits for the §13 approvals.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.evidence import HOOKS, Evidence, _spec_of, evidence, report_path
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import Decider, flow, refusable, runbook_context
from pcdb import clock
from pcdb.changes import Change
from pcdb.checks import CheckResult
from pcdb.config import Environment, load_environment
from pcdb.context import RunbookContext
from pcdb.errors import PcdbError
from pcdb.install import HANDOVER, PHASES, PhaseSpec, full_plan, planned_failovers, refuse_bad_secrets
from pcdb.ledger import PLANNED_FAILOVERS
from pcdb.preflight import as_json, refusal
from pcdb.targets.base import Connection
from tasks.artifacts import Artifacts
from tasks.install import item_row, run_phase, run_preflight, summarize, write_handover

PORT = Connection   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)


def notification_channels(ctx: RunbookContext) -> list[Change]:
    """Phase 6: every channel of the routing (R-MON-5) has its Prefect notification block.

    The blocks' documents are read in one request, by name, without their secrets: whether each
    exists, of the type the spec names, is the question, and the webhooks' addresses stay on the
    server (Block.load would fetch them, one request and 50 ms a block)."""
    from prefect import get_client

    channels = ctx.env.notifications.channels
    with get_client(sync_client=True) as client:
        found = client.request("POST", "/block_documents/filter", json={
            "block_documents": {"name": {"any_": sorted({c.block.partition("/")[2] for c in channels.values()})}},
            "include_secrets": False, "limit": 200}).json()
    present = {f"{doc['block_type']['slug']}/{doc['name']}" for doc in found}
    out = []
    for name, channel in channels.items():
        if channel.block in present:
            out.append(Change("notification_channel", name, "unchanged", notes=(f"block {channel.block}",)))
        else:
            out.append(Change("notification_channel", name, "conflict",
                              notes=(f"block {channel.block} is missing; create it in Prefect so "
                                     f"{channel.purpose} reach {', '.join(channel.audience)}",)))
    return out


def _with_flow_steps(phase: PhaseSpec) -> PhaseSpec:
    # Steps that need Prefect itself live here, not in pcdb/.
    if phase.number == 6:
        return PhaseSpec(6, phase.title, (*phase.steps, ("check notification channels", notification_channels)))
    return phase


RUNBOOK_PHASES = tuple(_with_flow_steps(p) for p in PHASES)
ALL_PHASES = (*RUNBOOK_PHASES, HANDOVER)


def _on_completion(flow, flow_run, state) -> None:  # noqa: ARG001 - Prefect's hook signature
    run = flow_run
    spec = _spec_of(run)
    if spec is not None and not (run.parameters or {}).get("dry_run"):
        notify(spec, "info", f"pcdb install finished on {spec.name}",
               f"Install run {run.name} ({run.id}) on {spec.name} completed: {state.message or 'all phases done'}")


def _approval_gate(ctx: RunbookContext, decider: Decider) -> dict:
    """§13.2: every approver approves the plan shown (signed on production, each over the plan's
    SHA-256); the plan is made again before Phase 1 and must be the one they signed."""
    env = ctx.env
    plan = full_plan(ctx)  # the whole of it, read-only: resources, parameters, access, secrets, roles, grants
    refuse_bad_secrets([c for c in plan if c.resource == "secret"])  # before Phase 1, all of them at once
    rows = [item_row(c) for c in plan]
    lines = [f"- {c.resource} `{c.name}`: {c.action}" + (f" ({row['details']})" if c.changed or c.action == "conflict"
                                                          else "") for c, row in zip(plan, rows, strict=True)]
    wider = [f"- network rule {r.name} {r.cidr} is wider than the plan's subnets: {r.wider.reason} (agreed by "
             f"{r.wider.approved_by})" for r in env.network.allowed_subnets if r.wider is not None]
    shown = (f"## Install plan for `{env.name}`\n\n" + "\n".join(lines + wider) +
             f"\n\nApprovers (§13.2): {', '.join(f'{a.name} ({a.role})' for a in env.install.approval.approvers)}")
    create_markdown_artifact(shown, key=f"install-plan-{env.name}", description="plan shown for approval")
    made = decider.decide("install-approval", {"environment": env.name, "plan": rows}, env.approvers(),
                          needed=len(env.approvers()), shown=shown,
                          replan=lambda: {"environment": env.name, "plan": [item_row(c) for c in full_plan(ctx)]})
    return {"approved_by": [d.signer for d in made], "signed": all(d.signed for d in made),
            "at": clock.now().isoformat(timespec="seconds")}


@flow(name="install", on_completion=[_on_completion], **HOOKS)
@alive
@refusable
def install(env: str = "local", spec_path: str | None = None, phases: list[int] | None = None,
            dry_run: bool = False, remove_unknown_roles: bool = False, reverify: bool = False) -> dict:
    """Install the Product-Change database as the environment spec says (Phases 1-8).

    Args:
        env: environment name (deployments/<env>.yaml).
        spec_path: a spec file instead of the named environment.
        phases: run only these phases (1-8); the default is all.
        dry_run: show the plan and change nothing.
        remove_unknown_roles: Phase 5 drops roles the spec does not name (otherwise they are
            reported, and Phase 7 fails on them).
        reverify: Phase 7 repeats the failover and PITR checks even when the last install passed
            them on this same configuration (otherwise a no-change re-run relies on that run).
    """
    spec = load_environment(spec_path or env)  # a bad spec stops here, before any phase
    selected = sorted(set(phases or range(1, 9)))
    if not set(selected) <= set(range(1, 9)):
        raise PcdbError(f"phases must be between 1 and 8, got {selected}")
    ctx = runbook_context(spec)
    ctx.remove_unknown_roles = remove_unknown_roles
    ctx.spec_source = spec_path or env
    ctx.reverify = reverify
    with evidence(spec, ctx, "install") as ev:
        if dry_run:
            return run_install(ctx, selected, dry_run, ev)
        with mutating_slot(spec.name, "install"):  # one install, drill or verification at a time
            return run_install(ctx, selected, dry_run, ev)


def run_install(ctx: RunbookContext, selected: list[int], dry_run: bool = False, ev: Evidence | None = None) -> dict:
    """The body of the install flow, for a prepared context (the Azure tests give theirs an
    in-process ARM transport); call it inside a flow. ``ev`` receives the report and figures
    for the run ledger as soon as they exist (a failed verification still has its report)."""
    ev = ev or Evidence()
    ev.figures["dry_run"] = dry_run
    overrides = [{"name": r.name, "cidr": r.cidr, "reason": r.wider.reason, "approved_by": r.wider.approved_by}
                 for r in ctx.env.network.allowed_subnets if r.wider is not None]
    if overrides:   # network rules wider than the plan's, kept on purpose: recorded with who agreed
        ev.figures["network_overrides"] = overrides
    with Artifacts() as artifacts:   # tables and progress go beside the run (tasks/artifacts.py)
        return _run_phases(ctx, selected, dry_run, ev, artifacts)


def _run_phases(ctx: RunbookContext, selected: list[int], dry_run: bool, ev: Evidence, artifacts: Artifacts) -> dict:
    logger = get_run_logger()
    spec = ctx.env
    # The preflight first (read only): what Azure or this machine would refuse halfway through
    # is said now, each with what to do, and nothing is planned or changed while one fails.
    checks = run_preflight(quote(ctx))
    ev.figures["preflight"] = as_json(checks)
    artifacts.table([c.as_dict() for c in checks], key=f"install-preflight-{spec.name}",
                    description="the preflight: what must hold before Phase 1")
    refused = refusal(checks)
    if refused:
        raise PcdbError(refused)
    if dry_run:
        plan = full_plan(ctx)  # the whole of it, read-only: resources, parameters, access, secrets, roles, grants
        artifacts.table([item_row(c) for c in plan], key=f"install-plan-{spec.name}",
                        description="dry run: what the install would change")
        return {"status": "dry-run", "dry_run": True, "phases": [], "report": None,
                "plan": [c.as_dict() for c in plan]}
    decider = Decider(spec)
    try:
        # The plan is made for the approvers only: the secrets it would refuse, the preflight has
        # refused already, and each phase reads what exists before it changes anything.
        approval = _approval_gate(ctx, decider) if spec.install.approval.required else None
        if approval is not None:
            ev.figures["approval"] = approval      # also in the ledger: `--deployed` reads it back from there
    finally:
        ev.decisions = decider.collected
    progress = artifacts.progress(key=f"install-progress-{spec.name}", description="install progress across phases")
    results: dict[int, list] = {}
    seconds: dict[int, float] = {}
    for done, number in enumerate(n for n in selected if n != 8):
        artifacts.check()      # a refused artifact (or a server gone) stops the run before the next phase
        phase = next(p for p in RUNBOOK_PHASES if p.number == number)
        started = time.monotonic()
        results[number] = run_phase(quote(phase), quote(ctx), quote(artifacts))
        seconds[number] = time.monotonic() - started
        artifacts.move(progress, 100.0 * (done + 1) / len(selected))
    report_path = None
    if 8 in selected:
        artifacts.check()
        started = time.monotonic()
        report_path = handover(spec, ctx, results, approval, str(flow_run.get_id()), artifacts)
        seconds[8] = time.monotonic() - started
        artifacts.move(progress, 100.0)
        results[8] = []
        ev.report = str(report_path)
    phases = [_phase_outcome(number, results[number], seconds[number]) for number in results]
    ev.figures["phases"] = phases
    if ctx.verified_configuration:  # the disruptive checks ran and passed on this configuration and server
        ev.figures["verified_configuration"] = ctx.verified_configuration
        ev.figures["verified_server"] = ctx.verified_server
    if planned := planned_failovers(results.get(7, [])):  # read by the health rule (pcdb/health.py)
        ev.figures[PLANNED_FAILOVERS] = planned
    logger.info("install of %s finished: %s", spec.name, {p["number"]: p["summary"] for p in phases})
    checks = [i for items in results.values() for i in items if isinstance(i, CheckResult)]
    failed = [c.name for c in checks if not c.passed]
    if checks:
        ev.figures["checks"] = {"passed": len(checks) - len(failed), "total": len(checks)}
    if failed:
        raise PcdbError(f"verification failed: {', '.join(failed)}; see the handover report {report_path}")
    return {"status": "completed", "phases": phases, "report": str(report_path) if report_path else None,
            "checks": {"passed": sum(c.passed for c in checks), "total": len(checks)} if checks else None,
            "approval": approval}


def _phase_outcome(number: int, items: list, seconds: float) -> dict:
    """One phase for the CLI's JSON: number, name, state, changes, seconds (and a summary line)."""
    changed = [i for i in items if isinstance(i, Change) and i.changed]
    state, summary = ("written", "handover report written") if number == 8 else summarize(items)
    name = next(p.title for p in ALL_PHASES if p.number == number)
    return {"number": number, "name": name, "state": state, "changes": len(changed),
            "seconds": round(seconds, 3), "summary": summary}


def handover(spec: Environment, ctx: RunbookContext, results: dict[int, list], approval: dict | None,
             run_id: str, artifacts: Artifacts) -> Path:
    """Phase 8 as a task run: the handover document, written to the reports folder and shown as
    an artifact (refused if any secret of the run appears in it)."""
    titles = {p.number: p.title for p in ALL_PHASES}
    return Path(write_handover(quote(ctx), quote(results), approval, run_id, titles,
                               report_path(spec, f"handover-{spec.name}"), quote(artifacts)))
