"""The install runbook's task: one step of a phase, retried only when the failure is transient."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pcdb.changes import Change
from pcdb.checks import CheckResult
from pcdb.context import RunbookContext
from pcdb.errors import is_transient
from pcdb.install import Step


def transient_only(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's signature
    """Retry a failed step only for transient errors (connection refused, lock timeout, 5xx)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - we classify, not handle
        return is_transient(exc)
    return False


@task(name="install step", task_run_name="{label}", retries=3, retry_delay_seconds=[2, 10, 30],
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
