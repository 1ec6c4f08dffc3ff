"""The install runbook's tasks: a phase as a task run of its own, each of its steps a task nested
in it (retried only when the failure is transient), the preflight, and Phase 8's report."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from pcdb.changes import Change
from pcdb.checks import CheckResult
from pcdb.context import RunbookContext
from pcdb.errors import PcdbError
from pcdb.install import HANDOVER, PhaseSpec, Step, handover_text, preflight
from pcdb.preflight import Check
from pcdb.private import write_private
from tasks.artifacts import Artifacts
from tasks.retry import RETRIES, RETRY_DELAYS, transient_only


@task(name="install step", task_run_name="{label}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE, timeout_seconds=3600)
def run_step(label: str, step: Step, ctx: RunbookContext) -> list[Change | CheckResult]:  # noqa: ARG001 - label names the task run
    """Run one idempotent install step and log what it changed (never a secret)."""
    logger = get_run_logger()
    items = step(ctx)
    for item in items:
        if isinstance(item, Change):
            details = "; ".join([*(f"{k}: {a} -> {b}" for k, (a, b) in item.diff.items()), *item.notes])
            logger.info("%s %s: %s%s", item.resource, item.name, item.action, f" ({details})" if details else "")
        else:
            log = logger.info if item.passed else logger.error
            log("check %s [%s]: %s - %s", item.name, item.requirement, item.verdict,
                item.evidence)
    return items


@task(name="preflight", task_run_name="preflight: what must hold before Phase 1", retries=RETRIES,
      retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE, timeout_seconds=600)
def run_preflight(ctx: RunbookContext) -> list[Check]:
    """Read only, before Phase 1: what the install needs from where it runs, each check logged."""
    logger = get_run_logger()
    found = preflight(ctx)
    for check in found:
        if check.ok:
            logger.info("preflight %s: ok - %s", check.name, check.detail)
        else:
            logger.error("preflight %s: FAILED - %s; what to do: %s", check.name, check.detail, check.fix)
    return found


class PhaseFailed(PcdbError):
    """A step failed; the message says which phase, which step, why, and how to resume."""


def summarize(items: list) -> tuple[str, str]:
    """The state and the summary line of a phase's (or a step's) items."""
    changed = sum(isinstance(i, Change) and i.changed for i in items)
    checks = [i for i in items if isinstance(i, CheckResult)]
    if checks:
        passed = sum(c.passed for c in checks)
        return ("passed" if passed == len(checks) else "failed"), f"{passed}/{len(checks)} checks passed"
    return ("changed", f"{changed} changed") if changed else ("unchanged", "unchanged")


def item_row(item: Change | CheckResult) -> dict:
    """One line of a phase's table: what changed (with the differences) or a check's verdict."""
    if isinstance(item, Change):
        return {"resource": item.resource, "name": item.name, "action": item.action,
                "details": "; ".join([*(f"{k}: {a} -> {b}" for k, (a, b) in item.diff.items()), *item.notes])}
    return {"resource": "check", "name": item.name, "action": item.verdict, "details": item.evidence}


# A phase's run is the unit a DBA reads in the UI: its own page, a log line per step, its table.
# No retries of its own: each step retries its transient failures, and a phase that failed is
# resumed by running the install again. The context is a parameter, as it is of every step: a task
# run records which inputs it had, never their values (the install's test scans prefect.db for
# every password of the run).
@task(name="install phase", task_run_name="Phase {phase.number} · {phase.title}", cache_policy=NO_CACHE,
      persist_result=False)
def run_phase(phase: PhaseSpec, ctx: RunbookContext, artifacts: Artifacts) -> list[Change | CheckResult]:
    """Run the phase's steps in order, each a task of its own; a failure names the phase, the
    step, the cause and how to resume. The phase's table of what changed is an artifact on it
    (sent beside the run: tasks/artifacts.py)."""
    logger = get_run_logger()
    items: list[Change | CheckResult] = []
    for label, step in phase.steps:
        try:
            done = run_step(label, step, quote(ctx))
        except Exception as exc:
            raise PhaseFailed(
                f"Phase {phase.number} · {phase.title}, step '{label}' failed: {exc}. Fix the cause "
                f"and run the install again: phases before {phase.number} are re-checked without "
                f"changes and it continues at phase {phase.number} "
                f"(pcdb install --env {ctx.env_arg})") from exc
        logger.info("%s: %s", label, summarize(done)[1])     # the step's own page lists each item
        items += done
    artifacts.table([item_row(i) for i in items], key=f"install-phase-{phase.number}",
                    description=f"Phase {phase.number} · {phase.title}: what changed")
    return items


@task(name="install handover", task_run_name=f"Phase 8 · {HANDOVER.title}", cache_policy=NO_CACHE,
      persist_result=False)
def write_handover(ctx: RunbookContext, results: dict[int, list], approval: dict | None, run_id: str,
                   titles: dict[int, str], path: Path, artifacts: Artifacts) -> str:
    """Phase 8: render the handover document, refuse it if any secret of the run appears in it,
    write it (owner-only) and show it as an artifact."""
    text = handover_text(ctx, results, approval, run_id, titles)
    if any(s and s in text for s in ctx.secret_values()):
        raise PcdbError("the handover report would contain a secret; it was not written")
    written = write_private(path, text)
    artifacts.markdown(text, key=f"handover-{ctx.env.name}", description=f"handover report ({written})")
    get_run_logger().info("handover report written: %s", written)
    return str(written)
