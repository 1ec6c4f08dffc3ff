"""Tasks of the backup-verification runbook."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pcdb import backups, clock
from pcdb.checks import CheckResult
from pcdb.context import RunbookContext
from tasks.retry import RETRIES, RETRY_DELAYS, transient_only


@task(name="daily backup checks", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, timeout_seconds=3600)
def daily_checks(ctx: RunbookContext, restore_now: bool = False) -> tuple[list[CheckResult], dict]:
    """Freshness, retention, geo copy, WAL archive, manifest verification."""
    logger = get_run_logger()
    results, summary = backups.daily_checks(ctx.target, ctx.env, last_restore=last_passing_restore_test(ctx),
                                            restore_now=restore_now)
    for r in results:
        (logger.info if r.passed else logger.error)("%s: %s - %s", r.name, "PASS" if r.passed else "FAIL", r.evidence)
    return results, summary


def last_passing_restore_test(ctx: RunbookContext) -> datetime | None:
    """When the newest restore test that passed ended, from the run ledger (None: none in 60 days
    or the ledger cannot be read)."""
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    try:
        with ctx.connect() as conn:
            found = ledger.rows(conn, LEDGER_SCHEMA, clock.now() - timedelta(days=60),
                                flow="backup-verification")
    except Exception as exc:  # noqa: BLE001 - no ledger means no proof: the deferred checks fail, they do not crash
        get_run_logger().warning("run ledger not readable: %s", exc)
        return None
    passed = [r["ended_at"] for r in found if (r.get("figures") or {}).get("restore_passed") and r.get("ended_at")]
    return max(passed) if passed else None


@task(name="KOS-log partition guard", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, timeout_seconds=600)
def partition_guard(ctx: RunbookContext) -> CheckResult | None:
    """Keep the KOS log's monthly partitions ahead (R-OPS-3): the inserts never run out of them."""
    from pcdb.maintenance import partition_guard as guard

    result = guard(ctx)
    if result is not None:
        (get_run_logger().info if result.passed else get_run_logger().error)("%s: %s", result.name, result.evidence)
    return result
