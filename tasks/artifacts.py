"""A run's artifacts sent beside it, not in its way.

Each phase of the install leaves its table and moves the progress bar: about twenty calls to the
server that the run used to wait for, one after the other (about 0.3 s of a 3.5 s no-change re-run,
docs/benchmarks.md, P2). They now go, in the order they were made, from one thread of their own,
each with the flow or task run it was made in (the same context Prefect reads the run's ids from).

Nothing is lost or hidden: the flow asks before each phase whether one was refused (``check``) and
waits for every one before it ends (``flush``); a refusal, or a server that stopped answering,
fails the run there, as it did when the phase made the call itself.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


class Artifacts:
    """One run's artifacts, sent in order from a thread of their own."""

    # A progress bar moves at most once a second (and always to its last value): a re-run's phases
    # take tens of milliseconds each, and every move is a write the server makes.
    PROGRESS_EVERY = 1.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcdb-artifacts")
        self._sent: list[Future] = []
        self._clock = clock
        self._moved = clock()
        self._unsent: tuple[Future, float] | None = None     # a move held back by the second

    def _send(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        # The caller's context goes along: Prefect takes the flow and task run ids, and the
        # server's address, from it.
        sent = self._pool.submit(contextvars.copy_context().run, call, *args, **kwargs)
        self._sent.append(sent)
        return sent

    def table(self, rows: list[dict], key: str, description: str) -> None:
        self._send(create_table_artifact, rows, key=key, description=description)

    def markdown(self, text: str, key: str, description: str) -> None:
        self._send(create_markdown_artifact, text, key=key, description=description)

    def progress(self, key: str, description: str) -> Future:
        """A progress bar at 0 %; its id is the future's result."""
        return self._send(create_progress_artifact, 0.0, key=key, description=description)

    def move(self, progress: Future, percent: float) -> None:
        """Move the bar to ``percent`` now, or with the next move or the end when the last move is
        less than PROGRESS_EVERY ago (100 % is never held back)."""
        now = self._clock()
        if percent < 100.0 and now - self._moved < self.PROGRESS_EVERY:
            self._unsent = (progress, percent)
            return
        self._moved, self._unsent = now, (progress, percent)
        self._send_unsent()

    def _send_unsent(self) -> None:
        if self._unsent is not None:
            progress, percent = self._unsent
            self._unsent = None
            # The bar was created by an earlier call on the same thread: its id is known by now.
            self._send(lambda: update_progress_artifact(progress.result(), percent))

    def _refusal(self) -> BaseException | None:
        """The first failure among the artifacts already sent (never waits)."""
        return next((sent.exception() for sent in self._sent if sent.done() and sent.exception()), None)

    def check(self) -> None:
        """Raise the first refusal among the artifacts already sent (the rest go on)."""
        refused = self._refusal()
        if refused is not None:
            raise refused

    def flush(self) -> None:
        """Wait for every artifact; raise the first that failed."""
        self._send_unsent()
        try:
            for sent in self._sent:
                sent.result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Artifacts:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.flush()
            return
        # The run failed: what it showed before still arrives, and its own error is the one told.
        # When the server refused an artifact already (or is gone), the rest are not tried.
        refused = self._refusal() is not None
        if not refused:
            self._send_unsent()
        self._pool.shutdown(wait=True, cancel_futures=refused)
