"""One step model for every runbook.

A runbook's policy (pcdb/) names each step as a DBA would ("promote the replica ...", "restore
the base backup", "compare fingerprints") and runs it through a :class:`Steps` runner. In a flow,
the runner makes each step a Prefect task run (tasks/steps.py): its own retries (transient
failures only, when the step says it may be retried), its duration and its result in the UI.
A human decision (approval, decision, confirmation) is asked *between* steps, by the policy's
callbacks, so it pauses the flow run, never a task. Without Prefect (benchmarks, the policy
tests on the in-memory target) the same steps run inline.

Either way every step is recorded, in order: its name, when it began, how long it took and how
it ended. The run's report and artifact show them as a timeline.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

from pcdb import clock

T = TypeVar("T")
STEP_TIMEOUT = 4 * 3600      # the longest step (a restore of a large server); a person's wait is never in one


class Run(Protocol):
    """How one step is run: inline, or as a Prefect task run (tasks/steps.py)."""

    def __call__(self, name: str, action: Callable[[], T], retry: bool) -> T: ...


def inline(name: str, action: Callable[[], T], retry: bool) -> T:  # noqa: ARG001 - the protocol's signature
    return action()


@dataclass(frozen=True)
class StepRecord:
    name: str
    began: str           # ISO 8601, milliseconds
    seconds: float
    outcome: str         # done | failed: <error>

    def as_dict(self) -> dict:
        return asdict(self)


class Steps:
    """Runs a runbook's steps through ``run`` and records each one."""

    def __init__(self, run: Run = inline):
        self._run = run
        self.records: list[StepRecord] = []

    def __call__(self, name: str, action: Callable[[], T], *, retry: bool = False) -> T:
        """Run ``action`` as the step ``name``; ``retry``: a transient failure may be retried
        (only for a step that is safe to run twice)."""
        began, started = clock.now(), time.monotonic()
        try:
            out = self._run(name, action, retry)
        except BaseException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.records.append(StepRecord(name, began.isoformat(timespec="milliseconds"),
                                           round(time.monotonic() - started, 3), f"failed: {first}"))
            raise
        self.records.append(StepRecord(name, began.isoformat(timespec="milliseconds"),
                                       round(time.monotonic() - started, 3), "done"))
        return out

    def beside(self, name: str, action: Callable[[], T], *, retry: bool = False) -> Future[T]:
        """Start the step ``name`` in a thread of its own, beside what this thread does next; its
        result (or its error) is the returned future's ``result()``. The thread carries this one's
        context, so in a flow the step is a task run of the same flow run, as Prefect's thread pool
        runs ``submit``ted tasks. Recorded when it ends, like any step. Prefect cannot interrupt a
        task in a thread, so the caller bounds its wait (``result(timeout=STEP_TIMEOUT)``)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcdb-step")
        future = pool.submit(contextvars.copy_context().run, self, name, action, retry=retry)
        pool.shutdown(wait=False)
        return future

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def as_dicts(self) -> list[dict]:
        return [r.as_dict() for r in self.records]

    def table(self) -> list[str]:
        return table(self.as_dicts())


def table(records: list[dict]) -> list[str]:
    """Step records as a markdown table (the run's timeline)."""
    lines = ["| # | step | began | seconds | outcome |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {r['name']} | {r['began']} | {r['seconds']:.3f} | {r['outcome']} |"
              for i, r in enumerate(records, 1)]
    return lines
