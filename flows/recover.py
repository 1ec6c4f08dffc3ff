"""Data-corruption recovery (§12.2.2), triggered by a person: restore to a new server at the chosen
time, compare the affected range with the live data, put back exactly the damaged rows under
approval, verify. The run is in the ledger, with its report."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import Decider, approve_plan, flow, name_run, refusable, runbook_context, stepped
from pcdb import ledger, predicate, recovery
from pcdb.config import Environment, load_environment
from pcdb.steps import table as steps_table


@flow(name="recover", **HOOKS)
@alive
@refusable
def recover(to: datetime, env: str = "local", spec_path: str | None = None, tables: list[str] | None = None,
            where: str | None = None, yes: bool = False, wait_seconds: float = 0) -> dict:
    """Put back the rows a corruption damaged, as they were at ``to``.

    Args:
        to: the moment before the corruption (with a time zone).
        tables: the affected tables (default: every table with a primary key).
        where: one boolean expression bounding the affected range, on every table named: column
            names, constants, comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL, casts and date
            functions (pcdb/predicate.py); anything else is refused before anything is made.
        yes: approve the replay by flag (sandbox only).
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
        wait_seconds: how long to wait for the environment's slot (another mutating runbook) before refusing
    """
    spec = load_environment(spec_path or env)
    if where is not None:
        predicate.parse(where)                         # refused before anything, even the slot
    ctx = runbook_context(spec)
    decider = Decider(spec, yes)

    def approve(facts: dict) -> None:
        """An approver approves the replay of exactly these rows: the export's SHA-256 is signed."""
        plan = {"to": to.isoformat(), "put_back": facts["put_back"], "export_sha256": ledger.file_sha256(facts["export"])}
        approve_plan(spec, decider, "recovery-replay", plan, f"Put back into the live {spec.server.name}: "
                     f"{facts['put_back']} (rows exported to {facts['export']})")
    recovery.check_time(ctx.target, spec, to)          # refused before anything, even the slot
    with evidence(spec, ctx, "recover") as ev, mutating_slot(spec.name, "data recovery", wait_seconds):
        ev.decisions = decider.collected
        with stepped() as step:       # each step a task run; the approval pauses the flow between them
            result = recovery.recover(ctx.target, spec, ctx.admin_password(), to, tables, where, approve,
                                      spec.reports_path / "recoveries", step=step)
        result.steps = step.as_dicts()
        name_run(f"recovery to {result.to} · {result.put_back} row(s) put back · "
                 + ("verified" if result.verified else "NOT verified"))
        result.notes = [*decider.notes, *result.notes]
        path = publish_report(spec, f"recover-{spec.name}", _report(spec, result, where), "data recovery report")
        result.report = ev.report = str(path)
        ev.figures = {k: v for k, v in result.as_dict().items() if k not in ("timeline", "steps", "notes", "report")}
        get_run_logger().info("recovery to %s: %s row(s) put back, verified=%s, %s s", to, result.put_back,
                              result.verified, result.recovery_seconds)
        notify(spec, "warning" if result.met else "critical",
               f"pcdb data recovery on {spec.name}: {result.put_back} row(s) put back"
               f"{'' if result.verified else ' — NOT VERIFIED'}",
               f"restored to {result.to}; verified: {result.verified}; {result.recovery_seconds}s "
               f"(target {result.target_rto_seconds:.0f}s). Report: {path}")
        return result.as_dict()


def _report(spec: Environment, r: recovery.RecoveryReport, where: str | None) -> str:
    lines = [f"# Data-corruption recovery on `{spec.name}`", "",
             f"- Restored to: {r.to} (throw-away server {r.server}, deleted)",
             f"- Range: {'every row' if not where else f'WHERE {where}'}",
             f"- Rows put back: {r.put_back}; verified: {r.verified}",
             f"- Recovery time: {r.recovery_seconds} s (target {r.target_rto_seconds:.0f} s): "
             f"{'met' if r.met else 'NOT met'}",
             f"- Rows exported to: {r.export or '-'}", "",
             "| table | deleted (put back) | overwritten (put back) | newer rows (kept) |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {len(t.missing)} | {len(t.changed)} | {t.extra} |" for t in r.tables]
    if r.skipped:
        lines += ["", "Not compared: " + ", ".join(r.skipped)]
    lines += ["", ledger_link(spec), "", "## Timeline", ""] + [f"- {at} — {action}" for at, action in r.timeline]
    lines += ["", "## Steps", "", *steps_table(r.steps)]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"
