"""The major version upgrade (#27), by hand only: the prechecks, the rehearsal on a copy restored
from the latest backup (pcdb/upgrade.py), then, unless ``rehearse_only``, the upgrade of the
environment's servers (the sandbox's; Azure's is not automated yet), after a signed decision on
production. Every run rehearses first: an upgrade never runs without a rehearsal that passed."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import Decider, approve_plan, name_run, refusable, runbook_context, stepped
from pcdb import upgrade
from pcdb.config import load_environment
from pcdb.errors import PcdbError
from pcdb.targets.base import UPGRADE_COPY

PORT = upgrade.UpgradeTarget   # the roles of the target used here (tests/unit/test_port_roles.py checks it)


@flow(name="upgrade", **HOOKS)
@alive
@refusable
def upgrade_major(to: int, env: str = "local", spec_path: str | None = None, rehearse_only: bool = True,
                  wait_seconds: float = 0) -> dict:
    """Prechecks and the rehearsal of the major version upgrade to ``to``.

    Args:
        to: the PostgreSQL major to upgrade to, e.g. 15
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
        rehearse_only: stop after the rehearsal; nothing of the environment changes
        wait_seconds: how long to wait for another mutating runbook on the environment to finish
    """
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    decider = Decider(spec)
    with evidence(spec, ctx, "upgrade") as ev, mutating_slot(spec.name, f"upgrade to {to}", wait_seconds), \
            stepped() as step:
        ev.decisions = decider.collected
        pending = ctx.target.upgrade_under_way()
        if pending is not None:       # killed halfway: finish it (its prechecks and rehearsal passed then)
            if str(pending) != str(to):
                raise PcdbError(f"an upgrade to {pending} is under way on {spec.name}: finish it first "
                                f"(pcdb upgrade --to {pending})")
            return _upgrade(spec, ctx, ev, step, to, {"to": to, "prechecks": [], "rehearsal": None,
                                                      "finished_an_interrupted_upgrade": True})
        def read_prechecks():
            with ctx.connect() as conn:
                return upgrade.prechecks(ctx.target, spec, conn, to)
        found = step(f"prechecks of the upgrade to {to}", read_prechecks, retry=True)
        failed = [c for c in found if not c.passed]
        result = {"to": to, "prechecks": [c.as_dict() for c in found], "rehearsal": None}
        ev.figures = {"to": to, "prechecks": {"passed": len(found) - len(failed), "total": len(found)},
                      "failed": [c.name for c in failed]}
        if failed:
            path = publish_report(spec, f"upgrade-{spec.name}", _report(spec.name, result, ledger_link(spec)),
                                  "upgrade prechecks")
            ev.report = str(path)
            name_run(f"upgrade to {to} · prechecks FAILED: {', '.join(c.name for c in failed)}")
            raise PcdbError(f"the upgrade to {to} stops before anything changes: "
                            + "; ".join(f"{c.name}: {c.evidence}. Fix: {c.details.get('fix')}" for c in failed)
                            + f". Report: {path}")
        if UPGRADE_COPY not in ctx.target.capabilities:
            raise PcdbError(f"the rehearsal of {spec.name}'s upgrade (a copy restored from its backup, upgraded) is "
                            "not built for this target yet: rehearse on the sandbox (docs/operations/upgrade.md)")
        rehearsal = upgrade.rehearse(ctx.target, spec, to, ctx.connect, ctx.connect_to, step=step)
        result["rehearsal"] = rehearsal.as_dict()
        path = publish_report(spec, f"upgrade-{spec.name}", _report(spec.name, result, ledger_link(spec)),
                              "upgrade rehearsal")
        result["report"] = ev.report = str(path)
        ev.figures |= {"rehearsal_passed": rehearsal.passed, "rehearsal_seconds": rehearsal.seconds,
                       "from_version": rehearsal.upgraded_from, "to_version": rehearsal.upgraded_to,
                       "pg_upgrade_seconds": rehearsal.pg_upgrade_seconds, "analyze_seconds": rehearsal.analyze_seconds,
                       "restore_seconds": rehearsal.restore.get("seconds")}
        name_run(f"upgrade to {to} · rehearsal {'passed' if rehearsal.passed else 'FAILED'} in {rehearsal.seconds} s")
        if not rehearsal.passed:
            notify(spec, "warning", f"pcdb upgrade rehearsal to {to} FAILED on {spec.name}",
                   f"{rehearsal.detail}\nReport: {path}")
            raise PcdbError(f"the rehearsal of the upgrade to {to} failed: {rehearsal.detail}. Report: {path}")
        get_run_logger().info("rehearsal of the upgrade to %s passed: %s", to, rehearsal.detail)
        if rehearse_only:
            return result
        if spec.production:    # the rehearsal changed nothing; this does: a signed decision first
            approve_plan(spec, decider, "upgrade", {"environment": spec.name, "to": to,
                                                    "rehearsal": {k: result["rehearsal"][k] for k in
                                                                  ("passed", "from_version", "to_version", "seconds")}},
                         f"Upgrade {spec.server.name} to PostgreSQL {to} in place (rehearsed: {rehearsal.detail})")
        return _upgrade(spec, ctx, ev, step, to, result)


def _upgrade(spec, ctx, ev, step, to: int, result: dict) -> dict:
    """The upgrade of the environment's servers, its ANALYZE, report and notification."""
    done = step(f"upgrade the servers to {to} (intent first)", lambda: ctx.target.upgrade_in_place(str(to)))
    result["upgrade"] = done
    ev.figures |= {"upgraded": True, "downtime_seconds": done.get("downtime_seconds"),
                   "upgrade_seconds": done.get("seconds"), "version_after": done.get("to")}
    result["upgrade"] |= step("the spec's parameters, the extensions' updates and ANALYZE on the new major",
                              lambda: upgrade.after_upgrade(ctx.target, ctx.connect), retry=True)
    path = publish_report(spec, f"upgrade-{spec.name}", _report(spec.name, result, ledger_link(spec)), "upgrade")
    result["report"] = ev.report = str(path)
    name_run(f"upgraded to {done.get('to')} · downtime {done.get('downtime_seconds')} s")
    notify(spec, "info", f"pcdb upgraded {spec.name} to PostgreSQL {done.get('to')}",
           f"Downtime {done.get('downtime_seconds')} s. Rollback: {done.get('rollback')}. Report: {path}")
    return result


def _report(name: str, result: dict, ledger_link_line: str) -> str:
    lines = [f"# Upgrade to PostgreSQL {result['to']}: `{name}`", "", ledger_link_line, "", "## Prechecks", "",
             "| check | result | evidence | what to do |", "|---|---|---|---|"]
    for c in result["prechecks"]:
        lines.append(f"| {c['name']} | {'PASS' if c['passed'] else 'FAIL'} | {c['evidence']} | "
                     f"{c['details'].get('fix', '')} |")
    rehearsal = result.get("rehearsal")
    if rehearsal:
        lines += ["", "## Rehearsal on a copy restored from the latest backup", "",
                  f"- Result: **{'passed' if rehearsal['passed'] else 'FAILED'}** in {rehearsal['seconds']} s",
                  f"- {rehearsal['from_version']} to {rehearsal['to_version']}; pg_upgrade seconds by part: "
                  f"{rehearsal['pg_upgrade_seconds']}; ANALYZE {rehearsal['analyze_seconds']} s",
                  f"- Restore and comparison: {rehearsal['restore'].get('detail', '')}", "",
                  "| check on the upgraded copy | result | evidence |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'PASS' if c['passed'] else 'FAIL'} | {c['evidence']} |" for c in rehearsal["checks"]]
    done = result.get("upgrade")
    if done:
        lines += ["", "## The upgrade", "", f"- {done['from']} to {done['to']}"
                  + (" (an interrupted upgrade, finished)" if done.get("resumed") else ""),
                  f"- Downtime (the primary stopped to started): {done.get('downtime_seconds')} s",
                  f"- Seconds by part: {done.get('seconds')}; ANALYZE {done.get('analyze_seconds')} s",
                  f"- Parameters: {done.get('parameters')}; extensions updated: "
                  f"{', '.join(done.get('extensions_updated') or []) or 'none'}",
                  f"- First base backup on the new major: {done.get('first_backup')}",
                  f"- Rollback: {done.get('rollback')}",
                  "- Edit `server.version` in the spec: until then pcdb reports it as out of date"]
    return "\n".join(lines) + "\n"
