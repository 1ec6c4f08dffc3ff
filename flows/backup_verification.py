"""Nightly backup verification (R-BAK-1/2, §8.1.1): daily checks, and on the restore-test day
(or on demand) a real restore proved by amcheck and per-table fingerprints."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import flow, name_run, refusable, runbook_context, stepped
from pcdb import backups, clock
from pcdb.config import load_environment
from pcdb.errors import PcdbError
from pcdb.steps import table as steps_table
from tasks.backups import daily_checks, partition_guard

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@flow(name="backup-verification", **HOOKS)
@alive
@refusable
def verify_backups(env: str = "local", spec_path: str | None = None, restore: bool | None = None,
                   wait_seconds: float = 1800) -> dict:
    """Verify the backups of an environment; fail (and notify) when any check fails.

    Args:
        env: environment name.
        spec_path: a spec file instead of the named environment.
        restore: run the restore test; default: only on the spec's restore-test weekday.
        wait_seconds: how long to wait for a drill or other mutating runbook on the same
            environment to finish before failing (a scheduled run waits rather than fails).
    """
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    if restore is None:
        today = clock.now().astimezone(ZoneInfo(spec.service.timezone)).weekday()
        restore = WEEKDAYS[today] == spec.backup.verification.restore_test_weekday
    with evidence(spec, ctx, "backup-verification") as ev, mutating_slot(spec.name, "backup verification",
                                                                                   wait_seconds):
        return _verify(spec, ctx, restore, ev)


def _verify(spec, ctx, restore: bool, ev) -> dict:
    guard = partition_guard(quote(ctx))   # the cheap daily step: the KOS log never runs out of partitions
    results, summary = daily_checks(quote(ctx), restore)
    outcome = dict(summary)
    if guard is not None:
        results = [*results, guard]
        outcome["partitions_ahead"] = guard.details["ahead_months"]
    if restore:
        with ctx.connect() as conn:       # full, or a sample when the last projection did not fit
            mode = backups.restore_mode(conn, spec, clock.now())
        get_run_logger().info("restore test: %s (%s)", mode.kind, mode.reason)
        with stepped() as step:   # each step of the restore test a task run
            tested = backups.restore_test(ctx.target, ctx.env, ctx.connect, ctx.connect_to, step=step, mode=mode)
        (get_run_logger().info if tested.passed else get_run_logger().error)("restore test: %s", tested.detail)
        outcome["restore_test"] = tested.as_dict()
        with ctx.connect() as conn:
            planned = backups.budget(tested, spec, backups.environment_size(conn))
        outcome["restore_test"]["budget"] = planned.as_dict() if planned else None
        if planned and not planned.fits:
            get_run_logger().warning("the restore test at %s would take %s s, past its window of %s s",
                                     planned.size_from, planned.projected_seconds, planned.window_seconds)
    failed = [r.name for r in results if not r.passed]
    if restore and not outcome["restore_test"]["passed"]:
        failed.append("restore test")
    text = _report(spec.name, results, outcome, failed, ledger_link(spec))
    path = publish_report(spec, f"backup-verification-{spec.name}", text, "report")
    outcome["report"] = str(path)
    ev.report = str(path)
    ev.figures = {"checks": {"passed": sum(r.passed for r in results), "total": len(results)},
                  "failed": failed, "restore_test": restore}
    if restore:
        test = outcome["restore_test"]
        ev.figures |= {"restore_seconds": test["seconds"], "restore_passed": test["passed"],
                       "restore_mb_per_second": round(test["bytes_per_second"] / 2**20, 1)
                       if test["bytes_per_second"] else None,
                       "restore_budget": test["budget"], "restore_mode": test["mode"]}
    name_run("backups " + (f"FAILED: {', '.join(failed)}" if failed else "verified")
             + (f" · restore test {'passed' if outcome['restore_test']['passed'] else 'FAILED'} in "
                f"{outcome['restore_test']['seconds']} s" if restore else ""))
    if failed:
        notify(spec, "critical", f"pcdb backup verification FAILED on {spec.name}",
               f"Run {flow_run.get_id()}: failed checks: {', '.join(failed)}. Report: {path}")
        raise PcdbError(f"backup verification failed: {', '.join(failed)}; report {path}")
    notify(spec, "info", f"pcdb backups verified on {spec.name}",
           f"All backup checks passed{' including a restore test' if restore else ''}. Report: {path}")
    get_run_logger().info("backups of %s verified: %s", spec.name, outcome)
    return outcome


def _report(name: str, results, outcome: dict, failed: list[str], ledger_link_line: str = "") -> str:
    lines = [f"# Backup verification: `{name}`", "", f"- Prefect flow run: `{flow_run.get_id()}`",
             f"- Result: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}", "",
             "| check | requirement | result | evidence |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.requirement} | {'PASS' if r.passed else 'FAIL'} | {r.evidence} |" for r in results]
    test = outcome.get("restore_test")
    if test:
        lines += ["", "## Restore test (R-BAK-2, RTO evidence for R-DR-3)", "",
                  f"- Passed: {test['passed']}",
                  f"- Mode: **{test['mode']}**, because {test['mode_reason']}"
                  + (f"; rows compared in {test['rows_compared_percent']} % of the tables' blocks (seed "
                     f"{test['sample_seed']}: the same seed picks the same block ranges)" if test["mode"] == "sample" else ""),
                  f"- Restore time: {test['seconds']} s",
                  f"- Restored size: {test['bytes'] if test['bytes'] is not None else '-'} bytes; throughput "
                  + (f"{test['bytes_per_second'] / 2**20:.1f} MB/s" if test["bytes_per_second"] else "-"),
                  f"- Tables compared: {test['tables_compared']}; mismatches: {test['mismatches'] or 'none'}",
                  f"- amcheck: {'clean' if test['amcheck_ok'] else 'FAILED'}",
                  f"- Throw-away server deleted: {test['server_deleted']}", f"- Detail: {test['detail']}",
                  *_budget_lines(test.get("budget")),
                  "", "### Steps", "", *steps_table(test["steps"])]
    lines += ["", ledger_link_line]
    return "\n".join(lines) + "\n"


def _budget_lines(budget: dict | None) -> list[str]:
    if not budget:
        return []
    gb = budget["size_bytes"] / 2**30
    return [f"- Projected at {gb:.1f} GiB ({budget['size_from']}): {budget['projected_seconds']:.0f} s "
            f"({budget['seconds_per_gb']} s per GiB, this run, end to end) against a window of "
            f"{budget['window_seconds']:.0f} s: " + ("fits" if budget["fits"] else "**does NOT fit**")]
