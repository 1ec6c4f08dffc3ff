"""The maintenance's steps, each a task named for what it does (partitions, statistics, ...)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tasks.retry import transient_only


@task(name="maintenance step", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, timeout_seconds=6 * 3600, task_run_name="{name}")
def _step(name: str, action) -> None:
    action()
    get_run_logger().info("step %s done", name)


def run_step(name: str, action) -> None:
    """Run ``action`` as the maintenance step ``name`` (a task; retried only when transient)."""
    _step(name, quote(action))
