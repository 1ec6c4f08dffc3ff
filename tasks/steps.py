"""Every runbook step as a Prefect task run (pcdb.steps): named as the DBA would name it, its
duration and result in the UI, retried only when the step allows it and only for a transient
failure (tasks/retry.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from pcdb.steps import STEP_TIMEOUT, Steps
from tasks.retry import RETRIES, RETRY_DELAYS, transient_only

T = TypeVar("T")


def _run(name: str, action):  # noqa: ARG001 - the name is the task run's
    return action()


_STEP = {"name": "step", "task_run_name": "{name}", "cache_policy": NO_CACHE, "retry_condition_fn": transient_only}
_RETRY = {"retries": RETRIES, "retry_delay_seconds": RETRY_DELAYS}
# A step beside another (Steps.beside) runs in a thread of its own, where Prefect cannot interrupt
# a task and warns, in the run's log, of a timeout that would not work: none there (with_options
# cannot take one away); the policy bounds its wait for the step instead.
_STEPS = {(main, retry): task(**_STEP, **(_RETRY if retry else {}),
                              **({"timeout_seconds": STEP_TIMEOUT} if main else {}))(_run)
          for main in (True, False) for retry in (True, False)}


def as_task(name: str, action: Callable[[], T], retry: bool) -> T:
    return _STEPS[threading.current_thread() is threading.main_thread(), retry](name, quote(action))


def task_steps() -> Steps:
    """A runner whose every step is a task run of the current flow run."""
    return Steps(as_task)
