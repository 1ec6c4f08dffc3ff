"""The retry policy of every pcdb task: a step is retried only when its failure is transient
(a connection refused or reset, a lock or statement timeout, a server restarting, an HTTP 5xx or
429 from Azure: pcdb.errors.is_transient decides), three times, 2 s, 10 s and 30 s apart. A
wrong password, a bad spec or a failed check is never retried: retrying cannot change it."""

from __future__ import annotations

from pcdb.errors import is_transient

RETRIES = 3
RETRY_DELAYS = [2, 10, 30]


def transient_only(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's signature
    """Retry a failed step only for transient errors (connection refused, lock timeout, 5xx)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - we classify, not handle
        return is_transient(exc)
    return False
