"""The daily checklist (§8.1.1, R-OPS-1) at 09:00 business time: each item checked from data.
The result goes to a markdown artifact, the report folder and the run ledger; a failed item
is notified (warning)."""

from __future__ import annotations

from prefect.runtime import flow_run

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import flow, name_run, runbook_context, stepped
from pcdb import checklist
from pcdb.config import load_environment


@flow(name="daily-checklist", **HOOKS)
@alive
def daily_checklist(env: str = "local", spec_path: str | None = None) -> dict:
    """Check every §8.1.1 item of an environment from its data; report, record, notify failures.

    Args:
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
    """
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    with evidence(spec, ctx, "daily-checklist") as ev:
        with stepped() as step:       # each group of items a task run
            items = checklist.run(ctx, step=step)
        failed = [i.name for i in items if i.details["available"] and not i.passed]
        unavailable = [i.name for i in items if not i.details["available"]]
        lines = [f"# Daily checklist (§8.1.1): `{spec.name}`", "", f"- Prefect flow run: `{flow_run.get_id()}`",
                 f"- Result: {'FAILED: ' + ', '.join(failed) if failed else 'every item passed'}"
                 + (f"; not readable here: {', '.join(unavailable)}" if unavailable else ""), "",
                 "| item | result | evidence |", "|---|---|---|"]
        lines += [f"| {i.name} | {'N/A' if not i.details['available'] else 'PASS' if i.passed else 'FAIL'} | "
                  f"{i.evidence.replace('|', '/')} |" for i in items]
        text = "\n".join(lines) + "\n"
        text += "\n" + ledger_link(spec) + "\n"
        path = publish_report(spec, f"daily-checklist-{spec.name}", text, "daily checklist")
        ev.report = str(path)
        ev.figures = {"items": len(items), "failed": failed, "not_available": unavailable}
        if failed:
            notify(spec, "warning", f"pcdb daily checklist of {spec.name}: {len(failed)} item(s) failed",
                   f"Failed: {', '.join(failed)}. Report: {path}")
        name_run(f"daily checklist · {len(items) - len(failed)}/{len(items)} passed"
                 + (f" · FAILED: {', '.join(failed)}" if failed else ""))
        return {"status": "failed" if failed else "passed", "report": str(path),
                "items": [{"name": i.name, "result": "n/a" if not i.details["available"] else
                           "pass" if i.passed else "fail", "evidence": i.evidence} for i in items]}
