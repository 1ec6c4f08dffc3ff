"""The server application pcdb runs asks again, inside the server, when SQLite was busy.

The API below answers through Prefect's own handler for a failed request
(``custom_internal_exception_handler``), mounted under /api as Prefect mounts its API, so the
test fails if Prefect stops calling a busy database retryable or changes its answer."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prefect.server.api.server import custom_internal_exception_handler
from starlette.routing import Mount

from flows.serverapp import RetryWhenBusy


def _locked() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("INSERT INTO task_run ...", {}, sqlite3.OperationalError("database is locked"))


def _server(busy_times: int):
    """An API whose POST /api/task_runs/ finds the database busy ``busy_times`` times."""
    seen: list[bytes] = []
    api = FastAPI()
    api.add_exception_handler(Exception, custom_internal_exception_handler)

    @api.post("/task_runs/")
    async def create(request: Request):
        seen.append(await request.body())
        if len(seen) <= busy_times:
            raise _locked()
        return JSONResponse({"created": (await request.json())["name"]}, status_code=201)

    @api.post("/maintenance/")
    async def maintenance():
        seen.append(b"")
        return JSONResponse({"detail": "down for maintenance"}, status_code=503)

    @api.post("/broken/")
    async def broken():
        seen.append(b"")
        raise ValueError("a bug")

    app = FastAPI(routes=[Mount("/api", app=api)])
    return app, seen


def _post(app, path: str, json: dict | None = None) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.post(path, json=json or {})
    return asyncio.run(go())


def test_a_write_the_busy_database_refused_is_asked_again_with_the_same_body_and_succeeds():
    app, seen = _server(busy_times=2)
    reply = _post(RetryWhenBusy(app, delays=(0.0, 0.0, 0.0)), "/api/task_runs/", {"name": "ensure server"})
    assert reply.status_code == 201 and reply.json() == {"created": "ensure server"}
    assert len(seen) == 3 and len(set(seen)) == 1 and b"ensure server" in seen[0]


def test_a_database_still_busy_after_every_retry_gives_the_client_prefects_503():
    app, seen = _server(busy_times=99)
    reply = _post(RetryWhenBusy(app, delays=(0.0, 0.0)), "/api/task_runs/", {"name": "x"})
    assert reply.status_code == 503 and reply.json() == {"exception_message": "Service Unavailable"}
    assert len(seen) == 3          # the first try and two more; then the client's own back-off applies


def test_other_answers_go_through_untouched_and_once():
    app, seen = _server(busy_times=0)
    wrapped = RetryWhenBusy(app, delays=(0.0, 0.0))
    reply = _post(wrapped, "/api/maintenance/")
    assert reply.status_code == 503 and reply.json() == {"detail": "down for maintenance"} and len(seen) == 1
    reply = _post(wrapped, "/api/broken/")
    assert reply.status_code == 500 and len(seen) == 2


def test_a_write_without_a_body_is_asked_again_too():
    calls = []

    async def app(scope, receive, send):          # DELETE /api/variables/name/x: no body, never read
        calls.append(scope["path"])
        status, body = (503, b'{"exception_message":"Service Unavailable"}') if len(calls) < 3 else (204, b"")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def go():
        transport = httpx.ASGITransport(app=RetryWhenBusy(app, delays=(0.0, 0.0, 0.0)))
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.delete("/api/variables/name/x")
    assert asyncio.run(go()).status_code == 204 and len(calls) == 3


def test_the_body_of_a_request_refused_before_it_is_read_is_never_read():
    """The API's credential is checked before the body is read: a refused request with a large
    body costs the middleware nothing, and a busy answer to a body not read is not replayed."""
    received, calls = [], []

    def counting(receive):
        async def wrapped():
            message = await receive()
            received.append(len(message.get("body", b"")))
            return message
        return wrapped

    async def app(scope, receive, send):
        calls.append(scope["path"])
        status = 401 if scope["path"] == "/api/refused" else 503
        body = b'{"exception_message":"Service Unavailable"}' if status == 503 else b"{}"
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    wrapped = RetryWhenBusy(app, delays=(0.0,))

    async def middleware(scope, receive, send):
        await wrapped(scope, counting(receive), send)

    async def go(path):
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.post(path, content=b"x" * 5_000_000)
    assert asyncio.run(go("/api/refused")).status_code == 401 and received == []
    assert asyncio.run(go("/api/unread")).status_code == 503 and received == []
    assert calls == ["/api/refused", "/api/unread"]             # each asked once


def test_pcdb_starts_its_server_on_this_application_and_never_with_prefects_telemetry(tmp_path, monkeypatch):
    """The persistent server runs flows.serverapp under uvicorn (TLS or not), and analytics stay
    off even when the operator's environment turns them on (``prefect server start`` was given
    --analytics-off)."""
    from pcdb.orchestrator import Orchestrator, ServerConfig

    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    orchestrator = Orchestrator(ServerConfig(tmp_path, "127.0.0.1", 4200, None, "sqlite", False))
    command = orchestrator.server_command()
    assert command[1:5] == ["-m", "uvicorn", "--factory", "flows.serverapp:create_app"]
    assert command[command.index("--port") + 1] == "4200"
    assert orchestrator.server_env()["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
