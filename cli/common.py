"""What every command shares: the Typer apps, the consoles, the options, the one way user errors
are shown, and how a command runs a flow against the environment's Prefect server (or a
temporary one that dies with the command).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timedelta
from functools import wraps
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli import warm
from pcdb.changes import Change
from pcdb.config import Environment, load_environment
from pcdb.errors import PcdbError
from pcdb.orchestrator import Orchestrator, ServerConfig, server_config
from pcdb.units import format_duration

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Product-Change database runbooks (Azure or the local sandbox).")


sandbox_app = typer.Typer(no_args_is_help=True, help="The local sandbox of real PostgreSQL servers.")


config_app = typer.Typer(no_args_is_help=True, help="Environment specs.")


app.add_typer(sandbox_app, name="sandbox")


app.add_typer(config_app, name="config")


server_app = typer.Typer(no_args_is_help=True, help="The persistent Prefect server, its UI, workers and deployments.")


app.add_typer(server_app, name="server")


history_app = typer.Typer(invoke_without_command=True, help="The run ledger: every runbook run, hash-chained.")


app.add_typer(history_app, name="history")


incident_app = typer.Typer(no_args_is_help=True, help="Incidents (§8.2): open, status, ack, step, close.")


app.add_typer(incident_app, name="incident")


health_app = typer.Typer(invoke_without_command=True, help="Health rules (§6) evaluated now; silences.")


app.add_typer(health_app, name="health")


out = Console()


err = Console(stderr=True)


EnvOption = Annotated[str, typer.Option("--env", "-e", help="environment name (deployments/NAME.yaml) or a spec path")]


EnvsOption = Annotated[list[str], typer.Option("--env", "-e", help="environment name or spec path; repeat for a fleet")]


JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our own errors into a message on stderr and exit status 1."""
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PcdbError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    return wrapper


def sandbox_target(env_name: str):
    from pcdb.targets.sandbox import SandboxTarget

    env = load_environment(env_name)
    if env.target != "sandbox":
        raise PcdbError(f"environment {env.name!r} targets {env.target}, not the sandbox; use --env local")
    return SandboxTarget(env)


def use_orchestrator(spec: Environment) -> ServerConfig | None:
    """Point Prefect at the environment's persistent server when it is up (call before any
    prefect import); otherwise Prefect starts its temporary server, with a start-up timeout a
    fresh 2-core machine needs (its first SQLite migration alone can take more than 20 s)."""
    config = server_config(spec)
    if os.environ.get("PREFECT_API_URL"):
        warm.settings_from_this_environment()
        return config if os.environ["PREFECT_API_URL"].rstrip("/") == config.url else None
    if Orchestrator(config).is_up():
        # The server answers only with its credential: read from where the spec keeps it, which
        # another local user cannot read.
        os.environ.update(config.client_env())
        # A server that dies mid-run is reported within seconds, not after Prefect's five
        # retries per call (about a minute each); a restart blip of a few seconds still passes.
        os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "3")
        warm.settings_from_this_environment()
        return config
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server listens on loopback for as long as this command runs: it asks for a
    # credential of this process's own, so no other local user can drive it meanwhile, and this
    # command's client sends the same one. A PREFECT_SERVER_API_AUTH_STRING inherited from the
    # shell belongs to some other server: kept, the client (without it) met 401 from its own server.
    import secrets

    os.environ["PREFECT_SERVER_API_AUTH_STRING"] = os.environ["PREFECT_API_AUTH_STRING"] = \
        f"pcdb:{secrets.token_urlsafe(24)}"
    warm.settings_from_this_environment()
    return None


def ensure_api() -> None:
    """No server configured: start the command's temporary Prefect server, which dies with this
    process however it ends (a SIGKILLed command once left one running for an hour)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from flows import tempserver

    with prefect_settings():
        os.environ["PREFECT_API_URL"] = tempserver.start(
            float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")))


def server_lost(config: ServerConfig | None, spec_arg: str) -> PcdbError | None:
    """The persistent server stopped answering while a run was going on: say so, and how to go on.

    Prefect's events and log workers still hold what the run sent (its task runs travel as
    events). Nothing they hold can reach a server that is gone: they would try each item again
    (7 s a connection) and complain after pcdb's line. So they are told nothing more and dropped
    (``backlog_abandoned``: the command then ends without waiting for them), and pcdb's line is the
    last one the operator reads. The run's record is in the ledger, not on the Prefect server."""
    if config is None or Orchestrator(config).healthy():
        return None
    _ABANDONED.set()
    logging.disable(logging.CRITICAL)     # the workers' complaints; pcdb's own line is not a log record
    return PcdbError(f"the Prefect server at {config.url} stopped answering during the run; start it again "
                     f"(`pcdb server up --env {spec_arg}`) and run the same command again: every step is "
                     "idempotent, the next run finishes what this one left")


_ABANDONED = threading.Event()


def backlog_abandoned() -> bool:
    """Whether the run's server was found gone: what Prefect's workers still hold is not waited for."""
    return _ABANDONED.is_set()


class _UserErrorsWithoutTraceback(logging.Formatter):
    """Wraps a console handler's formatter: a PcdbError (a user error, whose message says what to
    do) is printed as its message, without a Python traceback. The run's logs on the Prefect server
    keep the traceback: that handler is not wrapped."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and isinstance(record.exc_info[1], PcdbError):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)


def quiet_user_tracebacks() -> None:
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect._internal"):  # "": root
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter,
                                                                             _UserErrorsWithoutTraceback):
                handler.setFormatter(_UserErrorsWithoutTraceback(handler.formatter))


OWNED_SETTINGS = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_SSL_CERT_FILE",
                   "PREFECT_CLIENT_MAX_RETRIES", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                   "PREFECT_SERVER_ANALYTICS_ENABLED")


def prefect_settings():
    """Prefect's settings as this command set them (the server, its credential, its CA).

    Prefect read them from the environment when it was imported after the command set them, as
    a command that runs a flow does (``use_orchestrator`` comes first): then nothing is changed,
    because Prefect's ``temporary_settings`` builds the whole settings model again, 0.09 s."""
    import prefect.settings
    from prefect.settings import temporary_settings

    updates = {}
    for name in OWNED_SETTINGS:
        wanted = os.environ.get(name)
        setting = getattr(prefect.settings, name)
        if wanted and not _holds(setting.value(), wanted):
            updates[setting] = wanted
    return temporary_settings(updates) if updates else nullcontext()


def _holds(current: object, wanted: str) -> bool:
    """Whether a setting's current value is the text the environment gives it (anything not
    plainly equal counts as different, and is set again)."""
    if hasattr(current, "get_secret_value"):
        current = current.get_secret_value()
    if isinstance(current, bool):
        return str(current).lower() == wanted.strip().lower()
    if isinstance(current, int | float):
        try:
            return current == float(wanted)
        except ValueError:
            return False
    return current is not None and str(current) == wanted


def run_flow(call: Callable[[], Any], config: ServerConfig | None, spec_arg: str, spec: Environment | None = None):
    """Call a flow (return_state=True) tagged with its environment (the server's automations
    match on it; ``spec`` when the caller has loaded it already), print its UI link, and turn a
    lost server into one line."""
    from prefect import tags

    from flows.heartbeat import without_prefect_heartbeat
    from flows.service import env_tag

    quiet_user_tracebacks()
    if config is None:
        ensure_api()
    try:
        # The run sends pcdb's heartbeat, not Prefect's (flows/heartbeat.py says why).
        with prefect_settings(), without_prefect_heartbeat(), tags(env_tag(spec or load_environment(spec_arg))):
            state = call()
    except Exception as exc:
        lost = server_lost(config, spec_arg)
        if lost is not None:
            raise lost from None
        if isinstance(exc, PcdbError):
            raise
        raise PcdbError(f"the run could not be completed: {type(exc).__name__}: {exc}") from None
    run_id = state.state_details.flow_run_id
    if config is not None and run_id:
        err.print(f"run: {config.run_url(run_id)}", highlight=False, soft_wrap=True)
    if state.is_failed() or state.is_crashed():
        lost = server_lost(config, spec_arg)
        if lost is not None:
            raise lost
    return state


PAUSE_EXPIRED = "and never resumed"


def run_runbook(env: str, flow: Callable[..., Any], failure: str, **parameters: Any) -> dict:
    """Run a read-only runbook's flow for ``--env`` (a name or a spec path) against the
    environment's orchestrator and return its result; a failed run is a user error."""
    spec = load_environment(env)
    config = use_orchestrator(spec)
    state = run_flow(lambda: flow(**spec_args(env), **parameters, return_state=True), config, env, spec)
    return flow_result(state, failure)


def flow_result(state, failure: str, approval_timeout: timedelta | None = None):
    """The flow's return value, or its failure message as a user error. A run refused because
    another mutating runbook holds the environment is a user error too (exit 1), though it
    pages nobody."""
    if state.name == "Refused":
        raise PcdbError((state.message or "refused").removeprefix("refused: "))
    if state.is_failed() or state.is_crashed():
        message = state.message or failure
        if PAUSE_EXPIRED in message:
            waited = f" within {format_duration(approval_timeout)}" if approval_timeout else ""
            raise PcdbError(f"no approval came{waited}: the run waited at its approval gate and stopped there; "
                            "nothing was changed. Run it again and have the approvers approve the plan in the Prefect "
                            "UI (the run's 'Resume' form) before the timeout (install.approval.timeout)")
        raise PcdbError(message)
    return state.result()


def spec_args(env: str) -> dict[str, str | None]:
    """--env takes a name or a spec path; the flows take them as env / spec_path."""
    if env.endswith((".yaml", ".yml")):
        return {"env": "local", "spec_path": env}
    return {"env": env, "spec_path": None}


def json_default(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def print_changes(changes: list[Change], as_json: bool) -> None:
    if as_json:
        print(json.dumps([c.as_dict() for c in changes], indent=2, default=str))
        return
    table = Table("resource", "name", "action", "details")
    for change in changes:
        details = "; ".join([*(f"{k}: {a} -> {b}" for k, (a, b) in change.diff.items()), *change.notes])
        table.add_row(escape(change.resource), escape(change.name), change.action, escape(details))
    out.print(table)
    changed = sum(c.changed for c in changes)
    conflicts = sum(c.action == "conflict" for c in changes)
    summary = (f"{changed} to change, {len(changes) - changed - conflicts} unchanged" if changed else
               "nothing to change: everything is as the spec says")
    out.print(summary + (f"; {conflicts} conflict(s) to resolve first" if conflicts else ""))


def deployed_run(spec: Environment, env_arg: str, config: ServerConfig | None, flow: str, deployment: str,
                  parameters: dict) -> dict:
    """Run through a deployment on the environment's worker and read its evidence from the ledger."""
    if config is None:
        raise PcdbError(f"--deployed runs on the environment's worker: start the server first "
                        f"(`pcdb server up --env {env_arg}`)")
    from flows import service

    run_id = service.start_deployment_run(flow, deployment, parameters)
    err.print(f"run: {config.run_url(run_id)}", highlight=False, soft_wrap=True)
    state, message = service.wait_for_runs([run_id])[run_id]
    row = ledger_row(spec, run_id)
    figures = (row or {}).get("figures") or {}
    if state != "Completed":
        raise PcdbError(f"{deployment} run {run_id} ended {state}: {message or 'see the run in the UI'}")
    return {"status": "completed", "run_id": run_id, "phases": figures.get("phases", []),
            "report": (row or {}).get("report_path"), "checks": figures.get("checks"),
            "approval": figures.get("approval")}


def ledger_row(spec: Environment, run_id: str) -> dict | None:
    from flows.runbook import runbook_context
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    try:
        with runbook_context(spec).connect() as conn:
            return ledger.row_of_run(conn, LEDGER_SCHEMA, run_id)
    except Exception:  # noqa: BLE001 - no database yet (a dry run before the install): no row
        return None


def parse_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise PcdbError(f"{option} {text!r}: not a time; give it as ISO 8601, e.g. 2026-11-27T14:05:00+09:00") from None
    if when.tzinfo is None:
        raise PcdbError(f"{option} {text!r} has no time zone; add one, e.g. +09:00 or Z")
    return when


KeyOption = Annotated[str | None, typer.Option(
    "--key", help="your OpenSSH key (private, or the .pub of one held by ssh-agent); default ~/.ssh/id_ed25519, "
                  "id_ecdsa or id_rsa")]


def phase_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        numbers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise PcdbError(f"--phases {text!r}: give phase numbers 1-8 separated by commas, e.g. 3,4,5") from None
    if not all(1 <= n <= 8 for n in numbers):
        raise PcdbError(f"--phases {text!r}: phases are numbered 1 to 8")
    return numbers


def one_server(specs: list[Environment]) -> ServerConfig:
    configs = {server_config(s) for s in specs}
    if len(configs) > 1:
        raise PcdbError("these environments name different Prefect servers (orchestrator home/port); "
                        "bring them up one at a time")
    return configs.pop()
