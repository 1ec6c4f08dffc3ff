"""The Prefect server application pcdb runs: Prefect's own, with a busy database retried inside it.

On SQLite, Prefect's server answers a write with 503 when another writer got there first: a
transaction that read, then wrote, after a commit by one of the server's own services (the events
and task runs it records from the flows' events, the workers' polls). The transaction is rolled
back, and Prefect's client asks again after 2 s, then 4 s, 8 s... On this machine a no-change
`pcdb install` against `pcdb server up` met one such answer in about one run of two and lost 2.2 to
2.8 s to it (docs/benchmarks.md, "The no-change re-run"); the lock itself is gone within
milliseconds.

:class:`RetryWhenBusy` asks again itself, after 10, 20, 40... ms (1.27 s at most), and passes the
503 on only when the database is still busy after that, so the client's own back-off still covers
a lock that lasts. It replays only Prefect's answer for an error its clients may retry (the body
of ``custom_internal_exception_handler``'s 503): the request the client would have sent again
anyway. Every other answer, and every websocket, goes through untouched.

``python -m uvicorn --factory flows.serverapp:create_app`` runs it; pcdb starts its persistent and
its temporary servers so (pcdb/orchestrator.py, flows/tempserver.py).
"""

from __future__ import annotations

import asyncio
import json

BUSY = {"exception_message": "Service Unavailable"}   # Prefect's body for a retryable database error
DELAYS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)


class RetryWhenBusy:
    """ASGI middleware: a request Prefect answered 503 for a busy database is run again here.

    The request's body is kept only as the application reads it (a request refused before its
    body is read, as one without the API's credential is, costs no memory here), and a request
    is asked again only when its whole body was read the first time."""

    def __init__(self, app, delays: tuple[float, ...] = DELAYS):
        self.app = app
        self.delays = delays

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read = _Reader(receive, scope)
        for attempt, delay in enumerate((*self.delays, None)):
            answer = _Held(send, last=delay is None)
            fresh = {**scope, "state": dict(scope.get("state") or {})}   # routing writes into the scope
            given = read.receive if attempt == 0 else _once(read.request(), receive)
            error = None
            try:
                await self.app(fresh, given, answer.send)
            except Exception as exc:
                # Starlette raises the error again after its handler answered (for the server's
                # log); when that answer is the busy one held here, it may be asked again.
                if not answer.busy:
                    raise
                error = exc
            if not answer.busy:
                return
            if not read.complete:          # its body was not all read: it cannot be sent again
                await answer.flush()
                if error is not None:
                    raise error
                return
            await asyncio.sleep(delay)


class _Reader:
    """The connection's receive(), keeping the request's body as the application reads it."""

    def __init__(self, receive, scope: dict):
        self._receive = receive
        self._chunks: list[bytes] = []
        headers = dict(scope.get("headers") or ())       # ASGI names them in lower case
        has_body = b"transfer-encoding" in headers or headers.get(b"content-length", b"0").strip() not in (b"", b"0")
        self.complete = not has_body                      # no body: nothing to read

    async def receive(self) -> dict:
        message = await self._receive()
        if message["type"] == "http.request":
            self._chunks.append(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        return message

    def request(self) -> dict:
        return {"type": "http.request", "body": b"".join(self._chunks), "more_body": False}


def _once(first: dict, receive):
    """A receive() that returns ``first``, then whatever the connection says (a disconnect)."""
    given = False

    async def replay():
        nonlocal given
        if not given:
            given = True
            return first
        return await receive()
    return replay


class _Held:
    """Sends an answer on, except a 503 that is Prefect's busy body (unless it is the last try):
    that one is held, for the caller to ask again or to ``flush()``."""

    def __init__(self, send, last: bool):
        self._send, self._last = send, last
        self._held: list[dict] = []
        self._holding = False
        self.busy = False

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] == 503 and not self._last:
            self._holding = True
        if not self._holding:
            await self._send(message)
            return
        self._held.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            body = b"".join(m.get("body", b"") for m in self._held if m["type"] == "http.response.body")
            try:
                self.busy = json.loads(body) == BUSY
            except ValueError:
                self.busy = False
            if not self.busy:          # another 503: the client gets it as it was
                await self.flush()

    async def flush(self) -> None:
        for message in self._held:
            await self._send(message)
        self._held.clear()


def create_app():
    """Prefect's server application (its settings from the environment, as uvicorn's factory),
    with Prefect's logging set up as ``prefect server start`` does (an error in a request is
    written to the server's log with its traceback)."""
    from prefect.logging.configuration import setup_logging
    from prefect.server.api.server import create_app as prefect_app

    setup_logging()
    return RetryWhenBusy(prefect_app())
