"""The major version upgrade (#27), by hand only: the prechecks, the rehearsal on a copy restored
from the latest backup (pcdb/upgrade.py), then, unless ``rehearse_only``, the upgrade of the
environment's servers (the sandbox's with pg_upgrade; Azure's in place through ARM), measured
through the application's path and checked with Phase 7 after.

Rehearsal is the default. A run on another environment rehearses first, in the same run. On
production the upgrade itself needs a passing rehearsal of the same upgrade from the last 7 days
in the run ledger (``pcdb upgrade --rehearse`` makes one) and a signed decision over a plan that
names it; without one it refuses, unless ``without_rehearsal`` and the signed plan says so."""

from __future__ import annotations

from datetime import timedelta

from prefect import get_run_logger

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import Decider, approve_plan, flow, name_run, refusable, runbook_context, stepped
from pcdb import clock, install, upgrade
from pcdb.config import load_environment
from pcdb.errors import PcdbError
from pcdb.ledger import PLANNED_FAILOVERS
from pcdb.targets.base import UPGRADE_COPY

PORT = upgrade.UpgradeTarget   # the roles of the target used here (tests/unit/test_port_roles.py checks it)
PROBE_TABLE = "pcdb_upgrade_probe"
AFTER_STEPS = ("throughout: a probe writer on the application's path (table pcdb_upgrade_probe, dropped after) "
               "measures the downtime and reads back every acknowledged row",
               "after: the spec's parameters on the new major, ALTER EXTENSION ... UPDATE, ANALYZE",
               "then all of Phase 7's checks: a planned failover and back (a few seconds of write outage each) and a "
               "point-in-time restore to a throw-away server, deleted after")


@flow(name="upgrade", **HOOKS)
@alive
@refusable
def upgrade_major(to: int, env: str = "local", spec_path: str | None = None, rehearse_only: bool = True,
                  without_rehearsal: bool = False, wait_seconds: float = 0) -> dict:
    """Prechecks and the rehearsal of the major version upgrade to ``to``; then the upgrade.

    Args:
        to: the PostgreSQL major to upgrade to, e.g. 15
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
        rehearse_only: stop after the rehearsal; nothing of the environment changes
        without_rehearsal: production only: upgrade with no passing rehearsal from the last 7 days;
            the signed decision's plan says so
        wait_seconds: how long to wait for another mutating runbook on the environment to finish
    """
    spec = load_environment(spec_path or env)
    if without_rehearsal and (rehearse_only or not spec.production):
        raise PcdbError("without_rehearsal (--without-rehearsal) is for the upgrade of a production environment: "
                        "elsewhere every run rehearses first, and a rehearsal-only run is a rehearsal")
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
        current = next(c.details["current"] for c in found if c.name == "target version")
        if spec.production and not rehearse_only:     # the upgrade itself: a recorded rehearsal, then a decision
            recent = step("the last passing rehearsal of this upgrade (7 days)",
                          lambda: _recent_rehearsal(ctx, spec, to, current), retry=True)
            if recent is None and not without_rehearsal:
                raise PcdbError(
                    f"no passing rehearsal of the upgrade from {current} to {to} on {spec.name} in the last "
                    f"{upgrade.REHEARSAL_VALID.days} days, so nothing was changed. Rehearse first: `pcdb upgrade --env "
                    f"{spec.name} --to {to} --rehearse` (a copy restored from the latest backup, upgraded and checked; "
                    "nothing of the environment changes). To upgrade without one, add --without-rehearsal: the "
                    "decision you sign then says that no rehearsal vouches for it")
            result["rehearsal"] = recent
            ev.figures |= {"rehearsal_relied_on": recent["run_id"] if recent else None,
                           "without_rehearsal": recent is None}
            plan = {"environment": spec.name, "server": spec.server.name, "from": current, "to": to,
                    "rehearsal": {k: recent[k] for k in ("run_id", "ended_at", "passed", "from_version", "to_version",
                                                         "seconds")} if recent else
                    f"NONE in the last {upgrade.REHEARSAL_VALID.days} days: upgraded without a rehearsal",
                    "steps": [*ctx.target.upgrade_steps(str(to)), *AFTER_STEPS]}
            shown = (f"Upgrade {spec.server.name} from PostgreSQL {current} to {to} in place. "
                     + (f"Rehearsed in run {recent['run_id']} ({recent['ended_at']}): {recent['detail']}" if recent else
                        "**No rehearsal vouches for it** (--without-rehearsal).") + " Steps: "
                     + "; ".join(plan["steps"]))
            approve_plan(spec, decider, "upgrade", plan, shown)
            return _upgrade(spec, ctx, ev, step, to, result)
        if UPGRADE_COPY not in ctx.target.capabilities:
            raise PcdbError(f"the rehearsal of {spec.name}'s upgrade (a copy restored from its backup, upgraded) is "
                            "not built for this target: rehearse on the sandbox (docs/operations/upgrade.md)")
        rehearsal = upgrade.rehearse(ctx.target, spec, to, ctx.connect, ctx.connect_to, step=step)
        result["rehearsal"] = rehearsal.as_dict()
        path = publish_report(spec, f"upgrade-{spec.name}", _report(spec.name, result, ledger_link(spec)),
                              "upgrade rehearsal")
        result["report"] = ev.report = str(path)
        ev.figures |= {"rehearsal_passed": rehearsal.passed, "rehearsal_seconds": rehearsal.seconds,
                       "from_version": rehearsal.upgraded_from, "to_version": rehearsal.upgraded_to,
                       "pg_upgrade_seconds": rehearsal.pg_upgrade_seconds, "analyze_seconds": rehearsal.analyze_seconds,
                       "restore_seconds": rehearsal.restore.get("seconds"), "rehearsal_detail": rehearsal.detail[:400]}
        name_run(f"upgrade to {to} · rehearsal {'passed' if rehearsal.passed else 'FAILED'} in {rehearsal.seconds} s")
        if not rehearsal.passed:
            notify(spec, "warning", f"pcdb upgrade rehearsal to {to} FAILED on {spec.name}",
                   f"{rehearsal.detail}\nReport: {path}")
            raise PcdbError(f"the rehearsal of the upgrade to {to} failed: {rehearsal.detail}. Report: {path}")
        get_run_logger().info("rehearsal of the upgrade to %s passed: %s", to, rehearsal.detail)
        if rehearse_only:
            return result
        return _upgrade(spec, ctx, ev, step, to, result)


def _recent_rehearsal(ctx, spec, to: int, current: int) -> dict | None:
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    with ctx.connect() as conn:
        rows = ledger.rows(conn, LEDGER_SCHEMA, clock.now() - upgrade.REHEARSAL_VALID - timedelta(hours=1),
                           flow="upgrade")
    return upgrade.recent_rehearsal(rows, spec.name, to, current, clock.now())


def _upgrade(spec, ctx, ev, step, to: int, result: dict) -> dict:
    """The upgrade of the environment's servers under a probe writer on the application's path
    (the downtime, and no acknowledged row lost), then the new major's parameters, extension
    updates and ANALYZE, then Phase 7's checks, all of them; the report, the notification."""
    probe = upgrade.ApplicationProbe(ctx.target, spec, ctx.admin_password(), PROBE_TABLE)
    try:
        done = step(f"upgrade the servers to {to} (intent first)", lambda: probe.across(
            lambda: ctx.target.upgrade_in_place(str(to))))
    except Exception as exc:
        result["upgrade"] = {"failed": str(exc), "probe": probe.figures()}
        ev.figures |= {"upgraded": False, "upgrade_failed": str(exc)[:500]}
        path = publish_report(spec, f"upgrade-{spec.name}", _report(spec.name, result, ledger_link(spec)), "upgrade")
        ev.report = str(path)
        name_run(f"upgrade to {to} · FAILED")
        notify(spec, "critical", f"pcdb upgrade to PostgreSQL {to} FAILED on {spec.name}", f"{exc}\nReport: {path}")
        raise PcdbError(f"the upgrade to {to} failed: {exc}. Report: {path}") from exc
    result["upgrade"] = done | {"server_downtime_seconds": done.get("downtime_seconds"), **probe.figures()}
    ev.figures |= {"upgraded": True, "downtime_seconds": probe.outage_seconds,
                   "server_downtime_seconds": done.get("downtime_seconds"), "probe_rows_lost": probe.lost,
                   "upgrade_seconds": done.get("seconds"), "version_after": done.get("to")}
    result["upgrade"] |= step("the spec's parameters, the extensions' updates and ANALYZE on the new major",
                              lambda: upgrade.after_upgrade(ctx.target, ctx.connect), retry=True)
    ctx.reverify = True      # the failovers and the point-in-time restore, on the new major: never relied on
    checked = step("Phase 7's checks on the upgraded servers", lambda: install.verification(ctx))
    result["checks"] = [c.as_dict() for c in checked]
    failed = [c.name for c in checked if not c.passed]
    ev.figures |= {"checks_passed": f"{len(checked) - len(failed)}/{len(checked)}", "checks_failed": failed}
    if planned := install.planned_failovers(checked):   # its failover test: said by the health rule, not paged
        ev.figures[PLANNED_FAILOVERS] = planned
    path = publish_report(spec, f"upgrade-{spec.name}", _report(spec.name, result, ledger_link(spec)), "upgrade")
    result["report"] = ev.report = str(path)
    if failed or probe.lost:
        name_run(f"upgraded to {done.get('to')} · CHECKS FAILED")
        notify(spec, "critical", f"pcdb upgraded {spec.name} to PostgreSQL {done.get('to')}, but checks failed",
               f"Failed: {', '.join(failed) or 'none'}; acknowledged rows lost: {probe.lost}. "
               f"Rollback: {done.get('rollback')}. Report: {path}")
        raise PcdbError(f"upgraded to {done.get('to')}, but Phase 7's checks failed ({', '.join(failed) or 'none'}) "
                        f"or acknowledged rows were lost ({probe.lost}). Rollback: {done.get('rollback')}. "
                        f"Report: {path}")
    name_run(f"upgraded to {done.get('to')} · downtime {probe.outage_seconds} s")
    notify(spec, "info", f"pcdb upgraded {spec.name} to PostgreSQL {done.get('to')}",
           f"Downtime through the application's path {probe.outage_seconds} s; {len(checked)} checks passed. "
           f"Rollback: {done.get('rollback')}. Report: {path}")
    return result


def _report(name: str, result: dict, ledger_link_line: str) -> str:
    lines = [f"# Upgrade to PostgreSQL {result['to']}: `{name}`", "", ledger_link_line, "", "## Prechecks", "",
             "| check | result | evidence | what to do |", "|---|---|---|---|"]
    for c in result["prechecks"]:
        lines.append(f"| {c['name']} | {'PASS' if c['passed'] else 'FAIL'} | {c['evidence']} | "
                     f"{c['details'].get('fix', '')} |")
    rehearsal = result.get("rehearsal")
    if result.get("finished_an_interrupted_upgrade"):
        lines += ["", "The run finished an upgrade a killed run had begun (its prechecks and rehearsal passed then)."]
    elif rehearsal and "run_id" in rehearsal:
        lines += ["", "## Rehearsal relied on", "",
                  f"- Run {rehearsal['run_id']}, ended {rehearsal['ended_at']}: {rehearsal['from_version']} to "
                  f"{rehearsal['to_version']} passed in {rehearsal['seconds']} s", f"- {rehearsal['detail']}"]
    elif rehearsal:
        lines += ["", "## Rehearsal on a copy restored from the latest backup", "",
                  f"- Result: **{'passed' if rehearsal['passed'] else 'FAILED'}** in {rehearsal['seconds']} s",
                  f"- {rehearsal['from_version']} to {rehearsal['to_version']}; upgrade seconds by part: "
                  f"{rehearsal['pg_upgrade_seconds']}; ANALYZE {rehearsal['analyze_seconds']} s",
                  f"- Restore and comparison: {rehearsal['restore'].get('detail', '')}", "",
                  "| check on the upgraded copy | result | evidence |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'PASS' if c['passed'] else 'FAIL'} | {c['evidence']} |" for c in rehearsal["checks"]]
    elif "prechecks" in result and all(c["passed"] for c in result["prechecks"]):
        lines += ["", "## Rehearsal", "", "**None**: upgraded without a rehearsal, by a signed decision that says so"]
    done = result.get("upgrade")
    if done and "failed" in done:
        lines += ["", "## The upgrade FAILED", "", f"- {done['failed']}",
                  f"- The application's path meanwhile: {done['probe']}"]
    elif done:
        lines += ["", "## The upgrade", "", f"- {done['from']} to {done['to']}"
                  + (" (an interrupted upgrade, finished)" if done.get("resumed") else ""),
                  f"- Downtime through the application's path (first failed write to the first after it): "
                  f"{done.get('downtime_seconds')} s; acknowledged rows lost: {done.get('probe_rows_lost')} of "
                  f"{done.get('probe_rows_acknowledged')}" + (f" ({done['probe_note']})" if done.get("probe_note") else ""),
                  *([f"- The primary stopped to started: {done['server_downtime_seconds']} s"]
                    if done.get("server_downtime_seconds") is not None else []),
                  f"- Seconds by part: {done.get('seconds')}; ANALYZE {done.get('analyze_seconds')} s",
                  f"- Parameters: {done.get('parameters')}; extensions updated: "
                  f"{', '.join(done.get('extensions_updated') or []) or 'none'}",
                  *([f"- First base backup on the new major: {done['first_backup']}"] if done.get("first_backup") else []),
                  *([f"- Read replica: {done['replica']}"] if done.get("replica") else []),
                  f"- Rollback: {done.get('rollback')}",
                  "- Edit `server.version` in the spec: until then pcdb reports it as out of date"]
    if result.get("checks"):
        lines += ["", "## Phase 7's checks on the upgraded servers", "", "| check | result | evidence |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'PASS' if c['passed'] else 'FAIL'} | {c['evidence']} |" for c in result["checks"]]
    return "\n".join(lines) + "\n"
