"""Tasks of the backup-verification runbook."""

from __future__ import annotations

from contextlib import contextmanager

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pcdb import backups
from pcdb.checks import CheckResult
from pcdb.context import RunbookContext
from pcdb.targets.base import Endpoint
from tasks.install import transient_only


@task(name="daily backup checks", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, timeout_seconds=3600)
def daily_checks(ctx: RunbookContext) -> tuple[list[CheckResult], dict]:
    """Freshness, retention, geo copy, WAL archive, manifest verification."""
    logger = get_run_logger()
    results, summary = backups.daily_checks(ctx.target, ctx.env)
    for r in results:
        (logger.info if r.passed else logger.error)("%s: %s - %s", r.name, "PASS" if r.passed else "FAIL", r.evidence)
    return results, summary


@task(name="KOS-log partition guard", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, timeout_seconds=600)
def partition_guard(ctx: RunbookContext) -> CheckResult | None:
    """Keep the KOS log's monthly partitions ahead (R-OPS-3): the inserts never run out of them."""
    from pcdb.maintenance import partition_guard as guard

    result = guard(ctx)
    if result is not None:
        (get_run_logger().info if result.passed else get_run_logger().error)("%s: %s", result.name, result.evidence)
    return result


@task(name="restore test", cache_policy=NO_CACHE, timeout_seconds=4 * 3600)
def restore_test(ctx: RunbookContext) -> backups.RestoreTest:
    """Restore the latest point into a throw-away server and prove it (never retried blindly)."""
    @contextmanager
    def restored(endpoint: Endpoint):
        with psycopg.connect(endpoint.conninfo(ctx.env.server.admin.user, ctx.admin_password()),
                             autocommit=True) as conn:
            yield conn
    result = backups.restore_test(ctx.target, ctx.env, ctx.connect, restored)
    (get_run_logger().info if result.passed else get_run_logger().error)("restore test: %s", result.detail)
    return result
