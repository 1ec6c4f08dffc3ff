"""Every runbook step as a Prefect task run (pcdb.steps): named as the DBA would name it, its
duration and result in the UI, retried only when the step allows it and only for a transient
failure (tasks/retry.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from pcdb.steps import Steps
from tasks.retry import RETRIES, RETRY_DELAYS, transient_only

T = TypeVar("T")
STEP_TIMEOUT = 4 * 3600      # the longest step (a restore of a large server); a person's wait is never in one


@task(name="step", task_run_name="{name}", cache_policy=NO_CACHE, timeout_seconds=STEP_TIMEOUT,
      retry_condition_fn=transient_only)
def _step(name: str, action):  # noqa: ARG001 - the name is the task run's
    return action()


_RETRIED = _step.with_options(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS)


def as_task(name: str, action: Callable[[], T], retry: bool) -> T:
    return (_RETRIED if retry else _step)(name, quote(action))


def task_steps() -> Steps:
    """A runner whose every step is a task run of the current flow run."""
    return Steps(as_task)
