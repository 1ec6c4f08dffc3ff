"""Monthly maintenance (§8.3.1, R-OPS-3): plan -> approval (production) -> execute -> verify.

Deployed monthly (the first Sunday, early morning business time, outside the backup window);
`pcdb maintain` runs it by hand. The report, the artifact and the run ledger say what was done
and what was only recommended. One maintenance, drill or other mutating runbook per environment
at a time (the environment's concurrency slot); never inside Azure's maintenance window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import Decider, approve_plan, flow, name_run, refusable, runbook_context, stepped
from pcdb import clock
from pcdb import maintenance as m
from pcdb.config import Environment, load_environment


@flow(name="maintenance", **HOOKS)
@alive
@refusable
def maintenance(env: str = "local", spec_path: str | None = None,
                only: list[Literal["partitions", "statistics", "indexes", "slow_queries", "accounts", "hygiene"]]
                | None = None, dry_run: bool = False, wait_seconds: float = 1800) -> dict:
    """Run the monthly maintenance of an environment.

    Args:
        only: some of partitions, statistics, indexes, slow_queries, accounts, hygiene.
        dry_run: say what would be done; change nothing.
        wait_seconds: how long to wait for a drill or other mutating runbook to finish first.
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
    """
    spec = load_environment(spec_path or env)
    steps = m.check_steps(only)
    ctx = runbook_context(spec)
    now = clock.now()
    m.refuse_inside_maintenance_window(ctx, now)
    with evidence(spec, ctx, "maintenance") as ev:
        if dry_run:
            with stepped() as step:
                out = m.run(ctx, steps, dry_run=True, now=now, step=step)
        else:
            with mutating_slot(spec.name, "maintenance", wait_seconds):
                approved = False
                if spec.production:
                    decider = Decider(spec)
                    ev.decisions = decider.collected
                    approved = _approve(spec, decider, lambda: m.run(ctx, steps, dry_run=True, now=now))
                with stepped() as step:
                    out = m.run(ctx, steps, now=now, approved=approved, step=step)
        result = out.as_dict()
        text = report(spec, result, steps) + "\n" + ledger_link(spec) + "\n"
        path = publish_report(spec, f"maintenance-{spec.name}{'-dry-run' if dry_run else ''}", text,
                              "maintenance report", key=f"maintenance-{spec.name}")
        result["report"] = str(path)
        ev.report = str(path)
        ev.figures = {"dry_run": dry_run, "steps": steps,
                      "partitions": {k: len(v) if isinstance(v, list) else v for k, v in result["partitions"].items()},
                      "analyzed": len(result["statistics"]["analyzed"]), "reindexed": result["indexes"]["reindexed"],
                      "recommended": len(result["recommended"]), "deferred": len(result["deferred"]),
                      "problems": result["problems"]}
        _tell(spec, result, path, dry_run)
        name_run(f"maintenance{' (dry run)' if dry_run else ''} · {', '.join(steps)}"
                 + (f" · {len(result['problems'])} problem(s)" if result["problems"] else ""))
        return result


def _plan_of(outcome: m.Outcome) -> dict:
    """What a maintenance approval approves: what would be created, dropped, analyzed, rebuilt."""
    parts = outcome.partitions
    return {"create": parts["created"], "drop": parts["dropped"], "analyze": outcome.statistics["analyzed"],
            "reindex": [i.get("name") if isinstance(i, dict) else i for i in outcome.indexes["bloated"]]}


def _approve(spec: Environment, decider: Decider, dry_run) -> bool:
    """Production: an approver sees the plan (what would be dropped and rebuilt) and approves it,
    signed over the plan's SHA-256; the plan is made again before anything runs."""
    plan = _plan_of(dry_run())
    summary = (f"drop (after archive + proof): {', '.join(plan['drop']) or 'none'}; "
               f"create: {', '.join(plan['create']) or 'none'}; ANALYZE {len(plan['analyze'])} table(s); "
               f"REINDEX candidates: {len(plan['reindex'])}")
    create_markdown_artifact(f"# Maintenance plan for {spec.name}\n\n{summary}\n", key=f"maintenance-plan-{spec.name}",
                             description="plan shown for approval")
    approve_plan(spec, decider, "maintenance-approval", {"environment": spec.name, **plan},
                 f"Approve the monthly maintenance of production {spec.name}: {summary}",
                 replan=lambda: {"environment": spec.name, **_plan_of(dry_run())})
    return True


def _tell(spec: Environment, result: dict, path: Path, dry_run: bool) -> None:
    if result["problems"]:
        notify(spec, "critical", f"pcdb maintenance of {spec.name} stopped on {len(result['problems'])} problem(s)",
               f"Run {flow_run.get_id()}: " + " | ".join(result["problems"]) + f". Report: {path}")
    elif not dry_run:
        parts = result["partitions"]
        notify(spec, "info", f"pcdb maintenance of {spec.name} done",
               f"Partitions created {len(parts['created'])}, archived and dropped {len(parts['dropped'])}, "
               f"{parts['ahead_months']} month(s) ready ahead; {len(result['recommended'])} recommendation(s). "
               f"Report: {path}")
    get_run_logger().info("maintenance of %s: %s", spec.name, json.dumps(
        {k: result[k] for k in ("partitions", "statistics", "deferred", "problems")}, default=str))


def report(spec: Environment, r: dict, steps: list[str]) -> str:
    parts, idx = r["partitions"], r["indexes"]
    lines = [f"# Monthly maintenance{' (dry run: nothing was changed)' if r['dry_run'] else ''}: `{spec.name}`", "",
             f"- Prefect flow run: `{flow_run.get_id()}`", f"- Steps: {', '.join(steps)}",
             f"- Problems: {len(r['problems'])}; deferred: {len(r['deferred'])}; recommended: {len(r['recommended'])}",
             f"- Verified after the run: {'n/a (dry run)' if r['verified'] is None else 'yes' if r['verified'] else 'NO'}",
             "", "## Done" if not r["dry_run"] else "## Would be done", ""]
    if "partitions" in steps:
        lines += [f"- Partitions created: {', '.join(parts['created']) or 'none'}; "
                  f"{parts['ahead_months']} month(s) ready after this one",
                  "", "| partition | rows | SHA-256 | archive | proved | detached | dropped |",
                  "|---|---|---|---|---|---|---|"]
        for a in parts["archived"]:
            lines.append(f"| {a['name']} | {a['rows']} | {(a['sha256'] or '-')[:16]} | {a['archive'] or '-'} | "
                         f"{'yes' if a['verified'] else 'no'} | {'yes' if a['name'] in parts['detached'] else 'no'} | "
                         f"{'yes' if a['name'] in parts['dropped'] else 'no'} |")
        lines.append("")
    if "statistics" in steps:
        lines += [f"- ANALYZE: {', '.join(r['statistics']['analyzed']) or 'none'}",
                  f"- VACUUM: {', '.join(r['statistics']['vacuumed']) or 'none'}"]
    if "indexes" in steps:
        bloated = ", ".join(f"{b['name']} {b['bloat_percent']} %" for b in idx["bloated"])
        lines += [f"- REINDEX CONCURRENTLY: {', '.join(idx['reindexed']) or 'none'}",
                  f"- Invalid indexes: {', '.join(idx['invalid']) or 'none'}",
                  f"- Bloated (estimate): {bloated or 'none'}"]
        if idx["unused"]:
            lines += ["", "### Unused indexes (recommended for removal; statement to restore each)", ""]
            lines += [f"- `{u['name']}` on {u['table']}, {u['bytes']} bytes: `{u['restore_sql']}`" for u in idx["unused"]]
    if "slow_queries" in steps and r["slow_queries"]:
        lines += ["", "### Statements this month (top by total and by mean time)", "",
                  "| queryid | calls | total ms | mean ms | regression |", "|---|---|---|---|---|"]
        lines += [f"| {q['queryid']} | {q['calls']} | {q['total_ms']} | {q['mean_ms']} | "
                  f"{str(q['regression_percent']) + ' %' if 'regression_percent' in q else ''} |" for q in r["slow_queries"]]
    if "accounts" in steps:
        a = r["accounts"]
        lines += ["", "### Accounts", "", f"- Password ages (days): {a['password_age_days']}",
                  f"- Expired (§4.3.2): {', '.join(a['password_expired']) or 'none'}",
                  f"- Superusers: {', '.join(a['superusers']) or 'none'}",
                  f"- Roles the spec does not name: {', '.join(a['unexpected_roles']) or 'none'}",
                  f"- Grant drift against §4.1.2: {'; '.join(a['grant_drift']) or 'none'}",
                  "- Failed logins this month: "
                  + ("not available here (Log Analytics)" if a["failed_logins"] is None else str(a["failed_logins"]))]
    if "hygiene" in steps:
        h = r["hygiene"]
        lines += ["", "### Hygiene", "", f"- TLS certificate expires: {h.get('tls_certificate_expires') or 'managed by Azure'}",
                  f"- Parameter drift: {h.get('parameter_drift') or 'none'}",
                  f"- Unvalidated constraints: {', '.join(h.get('unvalidated_constraints', [])) or 'none'}",
                  f"- Invalid indexes: {', '.join(h.get('invalid_indexes', [])) or 'none'}"]
    for title, key in (("Problems (stopped a step; alerted)", "problems"),
                       ("Deferred (held up by the application; retried next run)", "deferred"),
                       ("Recommended (left to a person)", "recommended")):
        if r[key]:
            lines += ["", f"## {title}", ""] + [f"- {x}" for x in r[key]]
    return "\n".join(lines) + "\n"
