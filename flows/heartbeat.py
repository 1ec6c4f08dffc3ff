"""A runbook run's heartbeat: the sign that its process is alive, and what tells a run whose
machine vanished from one that is still working.

Every pcdb flow run sends ``prefect.flow-run.heartbeat`` events, the same events Prefect's own
run heartbeat sends, every :data:`EVERY`, from a thread of its own. The server's "went silent"
automation (flows/service.py) marks a run Crashed, and pages, when no heartbeat and no final state
came for three intervals: a worker's machine that died takes its runs with it, and nobody else
would ever say so.

Why pcdb's own and not Prefect's: Prefect 3.9's heartbeat thread sleeps in one-second steps and the
engine joins it at the end of every run, so every run ended up to a second late (0.88 s of an
empty flow's 1.27 s, profiled; docs/benchmarks.md). This thread waits on an event and stops the
moment the run's body ends. Prefect's own is switched off where pcdb starts runs: the worker's
command (flows/engine.py) and the CLI's in-process runs (``without_prefect_heartbeat``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from prefect.context import FlowRunContext, SettingsContext, get_settings_context
from prefect.events import emit_event

EVERY = timedelta(seconds=60)
SILENT_AFTER = 3          # intervals without a heartbeat before a run counts as gone
EVENT = "prefect.flow-run.heartbeat"
SENDER = "pcdb"           # the resource label that tells pcdb's heartbeats from Prefect's


@contextmanager
def without_prefect_heartbeat() -> Iterator[None]:
    """Settings under which a flow run started here sends no Prefect heartbeat (pcdb's own runs).

    The current settings with that one value changed, not Prefect's ``temporary_settings``: that
    builds the whole settings model again from the environment and the profile, 0.09 s of every
    command that runs a flow (docs/benchmarks.md, P2). None is a value the field allows, so
    nothing here needs validating."""
    context = get_settings_context()
    settings = context.settings
    if settings.flows.heartbeat_frequency is None:
        yield
        return
    flows = settings.flows.model_copy(update={"heartbeat_frequency": None})
    with SettingsContext(profile=context.profile, settings=settings.model_copy(update={"flows": flows})):
        yield


def _event_of(context: FlowRunContext) -> tuple[dict[str, str], list[dict[str, str]]]:
    run = context.flow_run
    resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name or "",
                "pcdb.sender": SENDER}
    related = [{"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow",
                "prefect.resource.name": context.flow.name if context.flow else ""}]
    if run.deployment_id:
        related.append({"prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                        "prefect.resource.role": "deployment"})
    related += [{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
                for tag in sorted(run.tags or [])]
    return resource, related


@contextmanager
def beating(every: timedelta = EVERY, send=emit_event) -> Iterator[threading.Thread | None]:
    """Send the current flow run's heartbeat every ``every`` while the block runs; the thread ends
    as soon as the block does. Outside a flow run (a direct call), nothing is sent."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        yield None
        return
    resource, related = _event_of(context)
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                send(event=EVENT, resource=resource, related=related)
            except Exception:  # noqa: BLE001 - a lost heartbeat is the automation's business, not the run's
                pass
            if stop.wait(every.total_seconds()):
                return

    # The thread sees this run's settings (the API it reports to), as Prefect's own does.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(loop,), daemon=True,
                              name=f"pcdb heartbeat {context.flow_run.id}")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=5)


def alive(body):
    """A runbook flow's body, with its heartbeat (``@flow`` above it, so it runs inside the run)."""
    @functools.wraps(body)
    def run(*args, **kwargs):
        with beating():
            return body(*args, **kwargs)
    # The signature with its annotations evaluated where the body was written: Prefect resolves a
    # flow's parameter types in the globals of the function it was given, this module's.
    run.__signature__ = inspect.signature(body, eval_str=True)   # type: ignore[attr-defined]
    run.sends_heartbeat = True   # type: ignore[attr-defined] - tests/unit/test_heartbeat.py looks for it
    return run
