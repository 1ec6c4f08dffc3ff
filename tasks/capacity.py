"""The capacity analysis's steps: the SQL snapshot of the service database and the metric history."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from pcdb import capacity, health
from pcdb.context import RunbookContext
from tasks.retry import RETRIES, RETRY_DELAYS, transient_only


@task(name="capacity snapshot", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, timeout_seconds=600)
def snapshot(ctx: RunbookContext, store: capacity.Store, now: datetime) -> dict:
    """Sizes, rows, XID ages, bloat, sequences and the log's size of the service database."""
    return capacity.take_snapshot(ctx, store, now)


@task(name="metric history", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, timeout_seconds=600)
def history(ctx: RunbookContext, now: datetime, weeks: int) -> tuple[dict, str]:
    """Hourly averages and maxima: Azure Monitor, or the sandbox's health store."""
    store = health.store_for(ctx.env)
    try:
        return capacity.load_history(ctx.target, store.db, now, weeks)
    finally:
        store.close()
