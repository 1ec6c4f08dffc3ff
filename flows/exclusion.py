"""One mutating runbook per environment at a time: a Prefect global concurrency limit
``pcdb-<env>-mutating`` of one slot, taken by installs, drills and backup verifications.

The slot is a lease on the Prefect server; with the temporary server the lease lives in that
server's memory and dies with the process that held it, leaving the slot taken for good. So the
holder is also recorded (a Prefect Variable: run id, pid, host, since), and a refusal checks it:
a holder whose run has ended, or whose process on this host is gone, is stale, and its slot is
freed. A live holder is named in the refusal; `pcdb unlock --env ENV` clears a stale one by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.variables import Variable

from pcdb import clock
from pcdb.errors import SlotTaken
from pcdb.process import alive

logger = logging.getLogger("pcdb.exclusion")


def limit_name(env: str) -> str:
    return f"pcdb-{env}-mutating"


def _holder_variable(env: str) -> str:
    return f"pcdb_{env.replace('-', '_')}_mutating_holder"  # variable names: letters, digits, _


def ensure_mutating_limit(env: str) -> str:
    """The per-environment limit of one drill or mutating runbook at a time (created once)."""
    name = limit_name(env)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


def holder(env: str) -> dict | None:
    """Who holds the environment's slot, as recorded when it was taken."""
    return Variable.get(_holder_variable(env), default=None)


def stale_reason(record: dict | None) -> str | None:
    """Why a recorded holder no longer holds anything (its run ended, its process is gone), or
    None when it may still be working."""
    if not record:
        return None
    if record.get("run_id"):
        with get_client(sync_client=True) as client:
            try:
                state = client.read_flow_run(record["run_id"]).state
            except ObjectNotFound:
                state = None
                if record.get("host") != socket.gethostname():
                    return f"its run {record['run_id']} is unknown to this server"
            if state is not None and state.is_final():
                return f"its run {record['run_id']} ended {state.name}"
    if record.get("host") == socket.gethostname() and not alive(int(record.get("pid", 0))):
        return f"its process {record.get('pid')} on {record['host']} is gone"
    return None


def describe(record: dict | None) -> str:
    if not record:
        return "a holder that left no record"
    return (f"{record.get('what', 'a runbook')} run {record.get('run_id') or '-'} since {record.get('since')} "
            f"(pid {record.get('pid')} on {record.get('host')})")


def free_slot(env: str) -> None:
    """Set the environment's slot free and forget its holder (the holder is stale, or forced)."""
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(limit_name(env), GlobalConcurrencyLimitUpdate(active_slots=0))
    Variable.unset(_holder_variable(env))


SLOW_SERVER_SECONDS = 30  # how long a slot with no recorded holder is asked for again
POLL_SECONDS = 2.0        # how often a waiting runbook looks at the slot and its holder
SAY_EVERY_SECONDS = 30.0  # how often it says what it waits for


def _free(limit: str) -> bool:
    with get_client(sync_client=True) as client:
        found = client.read_global_concurrency_limit_by_name(limit)
    return found.active_slots < found.limit


def _take(limit: str):
    """Take the slot now or not at all (no waiting inside Prefect, which logs every refused ask as
    an ERROR with a traceback)."""
    slot = concurrency(limit, occupy=1, strict=True, max_retries=0)
    try:
        slot.__enter__()
    except ConcurrencySlotAcquisitionError:
        return None
    return slot


def _acquire(env: str, limit: str, what: str, wait_seconds: float):
    """Take the slot, waiting up to ``wait_seconds`` for its holder to finish.

    Every POLL_SECONDS the slot is looked at, and so is its recorded holder: one whose run has
    ended (or crashed) or whose process on this host is gone is freed at once, with a line in
    the log, instead of after the whole wait. While waiting, the runbook says every
    SAY_EVERY_SECONDS what it waits for. A slot taken with no recorded holder (a holder between
    taking it and recording itself, or a slow server) is asked for again for SLOW_SERVER_SECONDS
    before it counts as taken."""
    began = time.monotonic()
    said = began
    polls = 0
    while True:
        polls += 1
        if _free(limit):
            slot = _take(limit)
            if slot is not None:
                return slot
        record = holder(env)
        reason = stale_reason(record)
        if reason is not None:
            logger.warning("freeing the slot of %s after %d look(s): %s (%s)", env, polls, describe(record), reason)
            free_slot(env)
            continue
        now = time.monotonic()
        patience = wait_seconds if record is not None else max(wait_seconds, SLOW_SERVER_SECONDS)
        if now - began >= patience:
            raise SlotTaken(f"another drill or mutating runbook holds {env}: {describe(record)}; the {what} did not "
                            f"start{f' after waiting {wait_seconds:.0f}s' if wait_seconds else ''}. Wait for it to "
                            f"finish; if nothing runs any more, `pcdb unlock --env {env}`")
        if now - said >= SAY_EVERY_SECONDS:
            logger.info("the %s of %s waits for the environment's slot: held by %s; waited %.0fs of %.0fs", what, env,
                        describe(record), now - began, patience)
            said = now
        time.sleep(min(POLL_SECONDS, max(0.05, patience - (now - began))))


@contextmanager
def mutating_slot(env: str, what: str, wait_seconds: float = 0) -> Iterator[str]:
    """Hold the environment's slot for the body; refuse at once (or after ``wait_seconds``)
    when another mutating runbook holds it, naming that holder. A stale holder's slot is freed
    and taken."""
    limit = ensure_mutating_limit(env)
    slot = _acquire(env, limit, what, wait_seconds)
    run = FlowRunContext.get()
    mine = {"what": what, "run_id": str(run.flow_run.id) if run and run.flow_run else None, "pid": os.getpid(),
            "host": socket.gethostname(), "since": clock.now().isoformat(timespec="seconds")}
    Variable.set(_holder_variable(env), mine, overwrite=True)
    try:
        yield limit
    finally:
        try:
            if holder(env) == mine:
                Variable.unset(_holder_variable(env))
        finally:
            slot.__exit__(None, None, None)
