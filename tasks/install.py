"""The install runbook's task: one step of a phase, retried only when the failure is transient."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pcdb.changes import Change
from pcdb.checks import CheckResult
from pcdb.context import RunbookContext
from pcdb.install import Step, preflight
from pcdb.preflight import Check
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
