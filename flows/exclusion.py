"""One mutating runbook per environment at a time: a Prefect global concurrency limit
``pcdb-<env>-mutating`` of one slot, taken by drills, backup verification and maintenance."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from pcdb.errors import PcdbError


def ensure_mutating_limit(env: str) -> str:
    """The per-environment limit of one drill or mutating runbook at a time (created once)."""
    name = f"pcdb-{env}-mutating"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextmanager
def mutating_slot(env: str, what: str, wait_seconds: float = 0) -> Iterator[str]:
    """Hold the environment's slot for the body; refuse at once (or after ``wait_seconds``)
    when another mutating runbook holds it."""
    limit = ensure_mutating_limit(env)
    try:
        slot = concurrency(limit, occupy=1, timeout_seconds=wait_seconds or 0.5, strict=True)
        slot.__enter__()
    except TimeoutError:
        raise PcdbError(f"another drill or mutating runbook is running on {env}; the {what} did not start. "
                        f"Wait for it to finish, or pass wait_seconds (limit {limit})") from None
    try:
        yield limit
    finally:
        slot.__exit__(None, None, None)
