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
from datetime import datetime, timezone

from prefect import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.variables import Variable

from pcdb.errors import PcdbError
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


def _acquire(env: str, limit: str, wait_seconds: float):
    """Take the slot, waiting up to ``wait_seconds`` for a holder to finish.

    A timeout while no holder is recorded is not a refusal: the server was slow to grant a free
    slot (a loaded machine, a cold SQLite), or a grant that arrived after an earlier timeout is
    still being handed back, or a holder is between taking the slot and recording itself. The
    slot is asked for again until one of them settles; a recorded holder ends the wait at once
    and the caller judges it."""
    deadline = time.monotonic() + max(wait_seconds, SLOW_SERVER_SECONDS)
    timeout = wait_seconds or 0.5
    while True:
        try:
            slot = concurrency(limit, occupy=1, timeout_seconds=timeout, strict=True)
            slot.__enter__()
            return slot
        except TimeoutError:
            if holder(env) is not None or time.monotonic() >= deadline:
                raise
            timeout = 2.0


@contextmanager
def mutating_slot(env: str, what: str, wait_seconds: float = 0) -> Iterator[str]:
    """Hold the environment's slot for the body; refuse at once (or after ``wait_seconds``)
    when another mutating runbook holds it, naming that holder. A stale holder's slot is freed
    and taken."""
    limit = ensure_mutating_limit(env)
    try:
        slot = _acquire(env, limit, wait_seconds)
    except TimeoutError:
        record = holder(env)
        reason = stale_reason(record)
        if reason is None:
            raise PcdbError(f"another drill or mutating runbook holds {env}: {describe(record)}; the {what} did not "
                            f"start. Wait for it to finish; if nothing runs any more, `pcdb unlock --env {env}`") from None
        logger.warning("freeing the slot of %s: %s (%s)", env, describe(record), reason)
        free_slot(env)
        slot = _acquire(env, limit, wait_seconds)
    run = FlowRunContext.get()
    mine = {"what": what, "run_id": str(run.flow_run.id) if run and run.flow_run else None, "pid": os.getpid(),
            "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Variable.set(_holder_variable(env), mine, overwrite=True)
    try:
        yield limit
    finally:
        try:
            if holder(env) == mine:
                Variable.unset(_holder_variable(env))
        finally:
            slot.__exit__(None, None, None)
