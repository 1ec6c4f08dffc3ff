"""The ``pcdb`` command: the front door to the runbooks and the local sandbox.

User errors (bad spec, missing binaries, a server that will not start) print one clear
message and exit 1; they never show a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pcdb import clock
from pcdb.changes import Change
from pcdb.config import Environment, load_environment
from pcdb.errors import PcdbError
from pcdb.orchestrator import Orchestrator, ServerConfig, server_config
from pcdb.units import UnitError, format_duration, parse_duration

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


def _sandbox_target(env_name: str):
    from pcdb.targets.sandbox import SandboxTarget

    env = load_environment(env_name)
    if env.target != "sandbox":
        raise PcdbError(f"environment {env.name!r} targets {env.target}, not the sandbox; use --env local")
    return SandboxTarget(env)


def _use_orchestrator(spec: Environment) -> ServerConfig | None:
    """Point Prefect at the environment's persistent server when it is up (call before any
    prefect import); otherwise Prefect starts its temporary server, with a start-up timeout a
    fresh 2-core machine needs (its first SQLite migration alone can take more than 20 s)."""
    config = server_config(spec)
    if os.environ.get("PREFECT_API_URL"):
        return config if os.environ["PREFECT_API_URL"].rstrip("/") == config.url else None
    if Orchestrator(config).is_up():
        # The server answers only with its credential: read from where the spec keeps it, which
        # another local user cannot read.
        os.environ.update(config.client_env())
        # A server that dies mid-run is reported within seconds, not after Prefect's five
        # retries per call (about a minute each); a restart blip of a few seconds still passes.
        os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "3")
        return config
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server listens on loopback for as long as this command runs: it asks for a
    # credential of this process's own, so no other local user can drive it meanwhile.
    if not os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        import secrets

        os.environ["PREFECT_SERVER_API_AUTH_STRING"] = os.environ["PREFECT_API_AUTH_STRING"] = \
            f"pcdb:{secrets.token_urlsafe(24)}"
    return None


def _ensure_api() -> None:
    """No server configured: start the command's temporary Prefect server, which dies with this
    process however it ends (a SIGKILLed command once left one running for an hour)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from flows import tempserver

    with _prefect_settings():
        os.environ["PREFECT_API_URL"] = tempserver.start(
            float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")))


def _server_lost(config: ServerConfig | None, spec_arg: str) -> PcdbError | None:
    """The persistent server stopped answering while a run was going on: say so, and how to go on."""
    if config is None or Orchestrator(config).healthy():
        return None
    return PcdbError(f"the Prefect server at {config.url} stopped answering during the run; start it again "
                     f"(`pcdb server up --env {spec_arg}`) and run the same command again: every step is "
                     "idempotent, the next run finishes what this one left")


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


def _quiet_user_tracebacks() -> None:
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect._internal"):  # "": root
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter,
                                                                             _UserErrorsWithoutTraceback):
                handler.setFormatter(_UserErrorsWithoutTraceback(handler.formatter))


# The Prefect settings pcdb sets in the environment for a command (_use_orchestrator): read again
# when Prefect runs, since Prefect took its settings when a module first imported it.
_OWNED_SETTINGS = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_SSL_CERT_FILE",
                   "PREFECT_CLIENT_MAX_RETRIES", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                   "PREFECT_SERVER_ANALYTICS_ENABLED")


def _prefect_settings():
    """Prefect's settings as this command set them (the server, its credential, its CA)."""
    import prefect.settings
    from prefect.settings import temporary_settings

    return temporary_settings({getattr(prefect.settings, name): os.environ[name] for name in _OWNED_SETTINGS
                               if os.environ.get(name)})


def _run_flow(call: Callable[[], Any], config: ServerConfig | None, spec_arg: str):
    """Call a flow (return_state=True) tagged with its environment (the server's automations
    match on it), print its UI link, and turn a lost server into one line."""
    from prefect import tags

    from flows.service import env_tag

    _quiet_user_tracebacks()
    if config is None:
        _ensure_api()
    try:
        with _prefect_settings(), tags(env_tag(load_environment(spec_arg))):
            state = call()
    except Exception as exc:
        lost = _server_lost(config, spec_arg)
        if lost is not None:
            raise lost from None
        if isinstance(exc, PcdbError):
            raise
        raise PcdbError(f"the run could not be completed: {type(exc).__name__}: {exc}") from None
    run_id = state.state_details.flow_run_id
    if config is not None and run_id:
        err.print(f"run: {config.run_url(run_id)}", highlight=False, soft_wrap=True)
    if state.is_failed() or state.is_crashed():
        lost = _server_lost(config, spec_arg)
        if lost is not None:
            raise lost
    return state


# Prefect's own words when a pause outlives its timeout (the server replaces the run's message).
_PAUSE_EXPIRED = "and never resumed"


def _run_runbook(env: str, flow: Callable[..., Any], failure: str, **parameters: Any) -> dict:
    """Run a read-only runbook's flow for ``--env`` (a name or a spec path) against the
    environment's orchestrator and return its result; a failed run is a user error."""
    config = _use_orchestrator(load_environment(env))
    state = _run_flow(lambda: flow(**_spec_args(env), **parameters, return_state=True), config, env)
    return _flow_result(state, failure)


def _flow_result(state, failure: str, approval_timeout: timedelta | None = None):
    """The flow's return value, or its failure message as a user error. A run refused because
    another mutating runbook holds the environment is a user error too (exit 1), though it
    pages nobody."""
    if state.name == "Refused":
        raise PcdbError((state.message or "refused").removeprefix("refused: "))
    if state.is_failed() or state.is_crashed():
        message = state.message or failure
        if _PAUSE_EXPIRED in message:
            waited = f" within {format_duration(approval_timeout)}" if approval_timeout else ""
            raise PcdbError(f"no approval came{waited}: the run waited at its approval gate and stopped there; "
                            "nothing was changed. Run it again and have the approvers approve the plan in the Prefect "
                            "UI (the run's 'Resume' form) before the timeout (install.approval.timeout)")
        raise PcdbError(message)
    return state.result()


def _spec_args(env: str) -> dict[str, str | None]:
    """--env takes a name or a spec path; the flows take them as env / spec_path."""
    if env.endswith((".yaml", ".yml")):
        return {"env": "local", "spec_path": env}
    return {"env": env, "spec_path": None}


def _json_default(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _print_changes(changes: list[Change], as_json: bool) -> None:
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


@sandbox_app.command("up")
@user_errors
def sandbox_up(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Create the sandbox (primary, sync standby, async replica, database) or restart what exists,
    and leave its supervisor running (it fails over to the synchronous standby when the primary
    stops answering for sandbox.auto_failover_after)."""
    target = _sandbox_target(env)
    changes = [target.ensure_resource_group(), *target.ensure_server(), target.ensure_replica(),
               target.ensure_database()]
    from pcdb.sandbox import supervisor

    spec_arg = str(Path(env).absolute()) if env.endswith((".yaml", ".yml")) else env
    changes.append(supervisor.start(target.sandbox, spec_arg))
    _print_changes(changes, as_json)


@sandbox_app.command("status")
@user_errors
def sandbox_status(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Show every server of the sandbox: role, endpoint, sync state, timeline, lag, and storage
    against the quota.

    Exit status 2 when something is wrong (two primaries, none, no synchronous standby, an
    interrupted failover, storage at the read-only limit), each said on stderr."""
    target = _sandbox_target(env)
    if not target.sandbox.exists():
        raise PcdbError(f"no sandbox for {env!r} at {target.sandbox.root}; run `pcdb sandbox up --env {env}`")
    status = target.sandbox.status()
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        if status["problems"]:
            raise typer.Exit(2)
        return
    table = Table(title=f"sandbox {status['environment']} ({status['root']}) — database {status['database']}")
    for column in ("name", "role", "running", "endpoint", "sync_state", "timeline", "lag_bytes"):
        table.add_column(column, no_wrap=True)
    for node in status["nodes"]:
        table.add_row(node["name"], node["role"], "yes" if node["running"] else "no",
                      f"{node['host']}:{node['port']}", str(node["sync_state"] or "-"),
                      str(node["timeline"]), str(node["lag_bytes"] if node["lag_bytes"] is not None else "-"))
    out.print(table)
    used = status.get("storage")
    if used:
        out.print(f"storage: {used['percent']} % of the quota ({used['used_bytes']} of {used['quota_bytes']} bytes, "
                  f"standing for {used['stands_for_bytes']} bytes); read-only at {used['read_only_at_percent']:g} %"
                  + (" — READ-ONLY now" if used["read_only"] else ""), highlight=False, markup=False)
    for problem in status["problems"]:
        err.print(f"[bold red]PROBLEM:[/bold red] {problem}", highlight=False, soft_wrap=True)
    if status["problems"]:
        raise typer.Exit(2)


@sandbox_app.command("restores")
@user_errors
def sandbox_restores(env: EnvOption = "local",
                     delete: Annotated[str | None, typer.Option("--delete", help="stop and remove this restored server")] = None,
                     as_json: JsonOption = False) -> None:
    """List the restored (throw-away) servers of the sandbox; --delete NAME removes one, e.g. what a
    killed restore test or drill left running."""
    target = _sandbox_target(env)
    if delete:
        change = target.sandbox.delete_server(delete)
        out.print(f"{delete}: {'deleted' if change.action == 'deleted' else 'no such restored server'}")
        return
    restores = target.sandbox.status()["restores"] if target.sandbox.exists() else []
    if as_json:
        print(json.dumps(restores, indent=2, default=str))
        return
    if not restores:
        out.print("no restored servers")
    for r in restores:
        out.print(f"{r['name']}: port {r['port']}, restored to {r['target_time']}, "
                  f"{'running' if r['running'] else 'stopped'} (pcdb sandbox restores --delete {r['name']})")


@sandbox_app.command("down")
@user_errors
def sandbox_down(env: EnvOption = "local") -> None:
    """Stop every server of the sandbox; the data stays for the next `up`."""
    target = _sandbox_target(env)
    stopped = target.sandbox.down()
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@sandbox_app.command("region")
@user_errors
def sandbox_region(action: Annotated[str, typer.Argument(help="down | up")], env: EnvOption = "local") -> None:
    """The sandbox's stand-in for a lost region: `down` stops the HA pair at once (the replica
    stays), `up` brings it back as it was."""
    target = _sandbox_target(env)
    if action not in ("down", "up"):
        raise PcdbError(f"sandbox region {action!r}: use down or up")
    change = target.stop_primary_region() if action == "down" else target.start_primary_region()
    out.print(f"primary region {'stopped' if action == 'down' else 'started'}" if change.changed
              else f"primary region: unchanged ({'; '.join(change.notes)})")


@sandbox_app.command("destroy")
@user_errors
def sandbox_destroy(env: EnvOption = "local",
                    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False) -> None:
    """Stop the sandbox and delete its folder (data, archive, backups, generated passwords)."""
    target = _sandbox_target(env)
    if not yes:
        if not sys.stdin.isatty():
            raise PcdbError(f"refusing to delete {target.sandbox.root} without --yes: there is no terminal to ask")
        typer.confirm(f"delete {target.sandbox.root} and everything in it?", abort=True)
    removed = target.sandbox.destroy()
    out.print(f"removed {target.sandbox.root}" if removed else f"nothing at {target.sandbox.root}")


@app.command("install")
@user_errors
def install_command(env: EnvOption = "local",
                    phases: Annotated[str | None, typer.Option(help="only these phases, e.g. 3,4,5")] = None,
                    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan, change nothing")] = False,
                    deployed: Annotated[bool, typer.Option("--deployed", help="run through the environment's deployment "
                                                           "on its worker (needs `pcdb server up`)")] = False,
                    remove_unknown_roles: Annotated[bool, typer.Option(
                        "--remove-unknown-roles", help="drop roles the spec does not name (what they own goes to "
                                                       "the admin); without it they are reported and Phase 7 fails")] = False,
                    reverify: Annotated[bool, typer.Option(
                        "--reverify", help="repeat Phase 7's failover and PITR checks even when the last install "
                                           "passed them on this same configuration")] = False,
                    as_json: JsonOption = False) -> None:
    """Run the install runbook (Phases 1-8) as a Prefect flow and print each phase's outcome.

    --json prints {status, phases: [{number, name, state, changes, seconds}], report}."""
    spec = load_environment(env)  # a bad spec fails here, before Prefect starts
    selected = _phase_list(phases)
    config = _use_orchestrator(spec)
    if deployed:
        result = _deployed_run(spec, env, config, "install", f"install-{spec.name}",
                               {"phases": selected, "dry_run": dry_run, "remove_unknown_roles": remove_unknown_roles,
                                "reverify": reverify})
    else:
        from flows.install import install  # the CLI is the one pcdb module that may import flows/

        state = _run_flow(lambda: install(**_spec_args(env), phases=selected, dry_run=dry_run,
                                          remove_unknown_roles=remove_unknown_roles, reverify=reverify,
                                          return_state=True), config, env)
        try:
            result = _flow_result(state, "the install failed; see the Prefect run for details",
                                  spec.install.approval.timeout)
        except PcdbError as exc:
            if as_json:
                print(json.dumps({"status": "failed", "error": str(exc), "phases": [], "report": None}, indent=2))
            raise
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "plan" or dry_run}, indent=2, default=str))
        return
    for phase in result.get("phases") or []:
        out.print(f"Phase {phase['number']} · {phase['name']}: {phase['summary']} ({phase['seconds']:.1f}s)")
    if result.get("report"):
        out.print(f"handover report: {result['report']}")
    if result.get("dry_run"):
        _print_changes([Change(c["resource"], c["name"], c["action"],
                               {k: (v["current"], v["desired"]) for k, v in c["diff"].items()}, tuple(c["notes"]))
                        for c in result["plan"]], False)


def _deployed_run(spec: Environment, env_arg: str, config: ServerConfig | None, flow: str, deployment: str,
                  parameters: dict) -> dict:
    """Run through a deployment on the environment's worker and read its evidence from the ledger."""
    if config is None:
        raise PcdbError(f"--deployed runs on the environment's worker: start the server first "
                        f"(`pcdb server up --env {env_arg}`)")
    from flows import service

    run_id = service.start_deployment_run(flow, deployment, parameters)
    err.print(f"run: {config.run_url(run_id)}", highlight=False, soft_wrap=True)
    state, message = service.wait_for_runs([run_id])[run_id]
    row = _ledger_row(spec, run_id)
    figures = (row or {}).get("figures") or {}
    if state != "Completed":
        raise PcdbError(f"{deployment} run {run_id} ended {state}: {message or 'see the run in the UI'}")
    return {"status": "completed", "run_id": run_id, "phases": figures.get("phases", []),
            "report": (row or {}).get("report_path"), "checks": figures.get("checks")}


def _ledger_row(spec: Environment, run_id: str) -> dict | None:
    from flows.runbook import runbook_context
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    try:
        with runbook_context(spec).connect() as conn:
            return ledger.row_of_run(conn, LEDGER_SCHEMA, run_id)
    except Exception:  # noqa: BLE001 - no database yet (a dry run before the install): no row
        return None


@app.command("verify-backups")
@user_errors
def verify_backups_command(env: EnvsOption = ["local"],  # noqa: B006 - typer's list default
                           restore_test: Annotated[bool, typer.Option(
                               "--restore-test", help="also restore and prove the latest backup")] = False,
                           as_json: JsonOption = False) -> None:
    """Run the backup-verification runbook (daily checks; with --restore-test a real restore).

    Several --env: a fleet, verified in parallel through each environment's work pool."""
    specs = [load_environment(e) for e in env]
    config = _use_orchestrator(specs[0])
    if len(specs) > 1:
        _verify_fleet(specs, env, config, restore_test, as_json)
        return
    from flows.backup_verification import verify_backups

    state = _run_flow(lambda: verify_backups(**_spec_args(env[0]), restore=restore_test, return_state=True),
                      config, env[0])
    result = _flow_result(state, "backup verification failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        out.print(f"{key}: {value}")


def _verify_fleet(specs: list[Environment], args: list[str], config: ServerConfig | None, restore: bool,
                  as_json: bool) -> None:
    if config is None:
        raise PcdbError("a fleet is verified through the work pools of its environments: start the server "
                        f"first (`pcdb server up {' '.join('--env ' + a for a in args)}`)")
    if len({server_config(s) for s in specs}) > 1:
        raise PcdbError("these environments report to different Prefect servers; verify them one by one")
    from flows import service

    name = "restore-test" if restore else "backup-verification"
    runs = {service.start_deployment_run("backup-verification", f"{name}-{s.name}"): s for s in specs}
    for run_id, s in runs.items():
        err.print(f"{s.name}: {config.run_url(run_id)}", highlight=False, soft_wrap=True)
    finished = service.wait_for_runs(list(runs))
    outcome = {}
    for run_id, (state, message) in finished.items():
        spec = runs[run_id]
        row = _ledger_row(spec, run_id) or {}
        outcome[spec.name] = {"state": state, "run_id": run_id, "message": message,
                              "report": row.get("report_path"), "figures": row.get("figures")}
    if as_json:
        print(json.dumps(outcome, indent=2, default=str))
    else:
        for name_, item in outcome.items():
            out.print(f"{name_}: {item['state']} ({item['report'] or item['message']})")
    failed = [n for n, item in outcome.items() if item["state"] != "Completed"]
    if failed:
        raise PcdbError(f"backup verification did not complete on {', '.join(failed)}")


@app.command("drill")
@user_errors
def drill_command(scenario: Annotated[str, typer.Argument(help="zone | region | corruption")],
                  env: EnvOption = "local",
                  mode: Annotated[str, typer.Option(help="planned | forced (zone drill)")] = "forced",
                  yes: Annotated[bool, typer.Option("--yes", help="give approvals by flag (sandbox only)")] = False,
                  confirm: Annotated[bool, typer.Option("--confirm", help="required on production")] = False,
                  stall_replica: Annotated[bool, typer.Option(
                      "--stall-replica", help="region drill: cut the replica's link first")] = False,
                  as_json: JsonOption = False) -> None:
    """Run a DR drill (zone failover, region failover, data corruption) and print measured RTO/RPO."""
    if scenario not in ("zone", "region", "corruption"):
        raise PcdbError(f"unknown drill {scenario!r}: use zone, region or corruption")
    if mode not in ("planned", "forced"):
        raise PcdbError(f"--mode {mode!r}: use planned or forced")
    config = _use_orchestrator(load_environment(env))
    from flows.dr_drill import dr_drill

    state = _run_flow(lambda: dr_drill(scenario=scenario, **_spec_args(env), mode=mode, confirm=confirm, yes=yes,
                                       stall_replica=stall_replica, return_state=True), config, env)
    result = _flow_result(state, "the drill failed", load_environment(env).install.approval.timeout)
    keys = ("scenario", "mode", "rto_seconds", "rpo_rows_lost", "rows_in_doubt", "target_rto_seconds",
            "target_rpo_seconds", "met", "topology_restored", "report")
    if as_json:
        print(json.dumps({k: result[k] for k in keys} | {"timeline": result["timeline"]}, indent=2, default=str))
        return
    for key in keys:
        out.print(f"{key}: {result[key]}")


def _parse_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise PcdbError(f"{option} {text!r}: not a time; give it as ISO 8601, e.g. 2026-11-27T14:05:00+09:00") from None
    if when.tzinfo is None:
        raise PcdbError(f"{option} {text!r} has no time zone; add one, e.g. +09:00 or Z")
    return when


_FAILOVER_KEYS = ("kind", "changed", "application", "outage_began", "recovery_seconds", "target_rto_seconds", "met",
                  "report")


def _failover(scenario: str, env: str, yes: bool, outage_began: str | None, as_json: bool) -> None:
    when = _parse_time(outage_began, "--outage-began")
    config = _use_orchestrator(load_environment(env))
    from flows.failover import failover

    state = _run_flow(lambda: failover(scenario=scenario, **_spec_args(env), yes=yes, outage_began=when,
                                       return_state=True), config, env)
    result = _flow_result(state, f"the {scenario} failover failed", load_environment(env).install.approval.timeout)
    if as_json:
        print(json.dumps({k: result[k] for k in _FAILOVER_KEYS} | {"timeline": result["timeline"]}, indent=2))
        return
    for key in _FAILOVER_KEYS:
        out.print(f"{key}: {result[key]}")


@app.command("failover")
@user_errors
def failover_command(scenario: Annotated[str, typer.Argument(help="zone | region")],
                     env: EnvOption = "local",
                     real: Annotated[bool, typer.Option("--real", help="really fail over; nothing is undone")] = False,
                     yes: Annotated[bool, typer.Option("--yes", help="decide and confirm by flag (sandbox only)")] = False,
                     outage_began: Annotated[str | None, typer.Option(
                         "--outage-began", help="when the outage began, ISO 8601 (the recovery time counts from it)")] = None,
                     as_json: JsonOption = False) -> None:
    """A real failover (§8.2.2): zone forces the HA standby up; region promotes the replica in the other
    region and points the application at it. Rehearse with `pcdb drill` instead."""
    if scenario not in ("zone", "region"):
        raise PcdbError(f"unknown failover {scenario!r}: use zone or region")
    if not real:
        raise PcdbError(f"`pcdb failover {scenario}` changes production's topology for real and undoes nothing: "
                        f"add --real to do it, or rehearse with `pcdb drill {scenario}`")
    _failover(scenario, env, yes, outage_began, as_json)


@app.command("failback")
@user_errors
def failback_command(scenario: Annotated[str, typer.Argument(help="region")],
                     env: EnvOption = "local",
                     yes: Annotated[bool, typer.Option("--yes", help="approve and confirm by flag (sandbox only)")] = False,
                     as_json: JsonOption = False) -> None:
    """Back to the primary region after a real region failover, planned and approved."""
    if scenario != "region":
        raise PcdbError(f"unknown failback {scenario!r}: use region")
    _failover("failback", env, yes, None, as_json)


@app.command("recover")
@user_errors
def recover_command(env: EnvOption = "local",
                    to: Annotated[str, typer.Option("--to", help="the moment before the corruption, ISO 8601 with a "
                                                                 "time zone")] = "",
                    tables: Annotated[str | None, typer.Option(
                        "--tables", help="the affected tables, comma-separated (default: every table with a key)")] = None,
                    where: Annotated[str | None, typer.Option(
                        "--where", help="one condition bounding the affected rows, e.g. \"billed_on >= '2026-11-01'\": "
                                        "columns, constants, comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL, casts, "
                                        "date functions; never statements")] = None,
                    yes: Annotated[bool, typer.Option("--yes", help="approve the replay by flag (sandbox only)")] = False,
                    as_json: JsonOption = False) -> None:
    """Data-corruption recovery (§12.2.2): restore to a new server at --to, compare, put back exactly
    the damaged rows under approval, verify."""
    if not to:
        raise PcdbError("--to is required: the moment before the corruption, e.g. 2026-11-27T14:05:00+09:00")
    when = _parse_time(to, "--to")
    if where is not None:
        from pcdb import predicate

        predicate.parse(where)        # refused here, before a run starts or anything is made
    names = [t.strip() for t in tables.split(",") if t.strip()] if tables else None
    spec = load_environment(env)
    config = _use_orchestrator(spec)
    from flows.recover import recover

    state = _run_flow(lambda: recover(to=when, **_spec_args(env), tables=names, where=where, yes=yes,
                                      return_state=True), config, env)
    result = _flow_result(state, "the recovery failed", spec.install.approval.timeout)
    keys = ("to", "restored_server", "tables", "skipped", "put_back", "export", "verified", "recovery_seconds",
            "target_rto_seconds", "met", "report")
    if as_json:
        print(json.dumps({k: result[k] for k in keys} | {"timeline": result["timeline"]}, indent=2))
        return
    for key in keys:
        out.print(f"{key}: {result[key]}")
    if not result["verified"]:
        raise typer.Exit(2)


def _incident_service(env: str):
    """The environment's spec, incident store and orchestrator: an incident outlives a command,
    so it runs on the environment's worker and needs the persistent server."""
    from pcdb.incident import IncidentStore

    spec = load_environment(env)
    config = _use_orchestrator(spec)
    if config is None:
        raise PcdbError(f"an incident runs on the environment's worker until it is closed: start the server first "
                        f"(`pcdb server up --env {env}`)")
    return spec, IncidentStore(spec), config


def _print_incident(data: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    out.print(f"{data['id']} [{data['severity']}] {data['summary']} — "
              f"{'open' if not data.get('closed_at') else 'closed ' + data['closed_at']}")
    for name, at in (data.get("due") or {}).items():
        out.print(f"  due {name}: {at}")
    for step in data.get("steps") or []:
        out.print(f"  step {step['number']} {step['name']} ({step['owner']}): "
                  f"{step['outcome'] or 'open'}{' by ' + step['done_by'] if step['done_by'] else ''}")


@incident_app.command("open")
@user_errors
def incident_open(env: EnvOption = "local",
                  severity: Annotated[str, typer.Option("--severity", help="P1 | P2 | P3 | P4 (§8.2.1)")] = "",
                  summary: Annotated[str, typer.Option("--summary", help="what is wrong, in a line")] = "",
                  began: Annotated[str | None, typer.Option("--began", help="when the outage began, ISO 8601")] = None,
                  by: Annotated[str | None, typer.Option("--by", help="who opens it (default: you@host)")] = None,
                  as_json: JsonOption = False) -> None:
    """Open an incident; it runs on the environment's worker until `pcdb incident close`."""
    import getpass
    import socket
    import time

    spec, store, config = _incident_service(env)
    levels = [s.level for s in spec.operations.incident_severities]
    if severity not in levels:
        raise PcdbError(f"--severity {severity!r}: use one of {', '.join(levels)}")
    if not summary.strip():
        raise PcdbError("--summary is required: say what is wrong, in a line")
    when = _parse_time(began, "--began")
    if when is not None and when > clock.now():
        raise PcdbError(f"--began {began} is in the future")
    from flows import service

    params = {"severity": severity, "summary": summary, "opened_by": by or f"{getpass.getuser()}@{socket.gethostname()}",
              **({"began": when.isoformat()} if when else {})}
    run_id = service.start_deployment_run("incident", f"incident-{spec.name}", params)
    err.print(f"run: {config.run_url(run_id)}", highlight=False, soft_wrap=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [i for i in store.all() if i.run_id == run_id]
        if found:
            _print_incident(found[0].summary_dict(spec.operations.incident), as_json)
            return
        time.sleep(0.5)
    raise PcdbError(f"the incident run {run_id} did not start within 2 minutes: is the worker of {spec.name} up "
                    f"(`pcdb server status --env {env}`)?")


@incident_app.command("status")
@user_errors
def incident_status(env: EnvOption = "local",
                    incident_id: Annotated[str | None, typer.Option("--id", help="one incident (default: the open ones)")] = None,
                    as_json: JsonOption = False) -> None:
    """The open incidents (or one), with what is due and who owns it."""
    from pcdb.incident import IncidentStore

    spec = load_environment(env)
    store = IncidentStore(spec)
    chosen = [store.load(incident_id)] if incident_id else store.open_ones()
    data = [i.summary_dict(spec.operations.incident) for i in chosen]
    if as_json:
        print(json.dumps(data[0] if incident_id else data, indent=2, ensure_ascii=False))
        return
    if not data:
        out.print(f"no open incident on {spec.name}")
    for item in data:
        _print_incident(item, False)


def _incident_action(env: str, incident_id: str, action: dict, as_json: bool, key: str | None = None) -> None:
    import time
    import uuid

    spec, store, _ = _incident_service(env)
    incident = store.load(incident_id)
    if not incident.open:
        raise PcdbError(f"incident {incident_id} is closed since {incident.closed_at}")
    from uuid import UUID

    from prefect.input import send_input

    from flows.incident import IncidentAction

    incident = _incident_followed(spec, store, incident)
    signed = {}
    if key or spec.decisions.unsigned == "refused" or spec.production:   # signed by the person it names
        key_path = _key_file(key)
        _signer_of(spec, key_path, action["by"])
        message = incident.decision_request(spec, action).message(action["by"])
        signed = {"message": message, "signature": _sign(message, key_path)}
    request = str(uuid.uuid4())
    send_input(IncidentAction(request_id=request, **action, **signed), flow_run_id=UUID(incident.run_id))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = store.load(incident_id).actions.get(request)
        if answer:
            if answer["result"] == "refused":
                raise PcdbError(answer["detail"])
            if as_json:
                print(json.dumps({"id": incident_id, **answer}, ensure_ascii=False))
            else:
                out.print(answer["detail"])
            return
        time.sleep(0.3)
    raise PcdbError(f"the incident run of {incident_id} did not answer within 2 minutes: is the worker up?")


def _incident_followed(spec: Environment, store, incident):
    """The incident's run, or a new one that takes the record over when the run ended with the
    incident still open (its worker was killed, the run cancelled or crashed)."""
    import time
    from uuid import UUID

    from prefect import get_client

    from flows import service

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(incident.run_id)).state
    if state is not None and not state.is_final() and state.name != "Cancelling":
        return incident
    err.print(f"the run following {incident.id} ended ({state.name if state else 'no state'}) with the incident open: "
              "a new run takes it over", highlight=False)
    run_id = service.start_deployment_run("incident", f"incident-{spec.name}",
                                          {"severity": incident.severity, "summary": incident.summary,
                                           "resume_id": incident.id})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        again = store.load(incident.id)
        if again.run_id == run_id:
            return again
        time.sleep(0.3)
    raise PcdbError(f"no run took over {incident.id} within 2 minutes: is the worker of {spec.name} up?")


ByOption = Annotated[str, typer.Option("--by", help="who confirms (an id of operations.incident.teams)")]
IdOption = Annotated[str, typer.Option("--id", help="the incident, e.g. INC-20261127-101500-P1")]


@incident_app.command("ack")
@user_errors
def incident_ack(env: EnvOption = "local", incident_id: IdOption = "", by: ByOption = "", key: KeyOption = None,
                 as_json: JsonOption = False) -> None:
    """Acknowledge: someone responds (the response time of its severity is measured to this)."""
    _incident_action(env, incident_id, {"action": "ack", "by": by}, as_json, key)


@incident_app.command("step")
@user_errors
def incident_step(env: EnvOption = "local", incident_id: IdOption = "", by: ByOption = "",
                  number: Annotated[int, typer.Option("--number", "-n", help="the step of §8.2.2, 1-8")] = 0,
                  not_needed: Annotated[bool, typer.Option("--not-needed", help="a conditional step that does not "
                                                                              "apply (say why in --note)")] = False,
                  note: Annotated[str, typer.Option("--note", help="what was found or done")] = "",
                  key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Confirm a step of the P1 timeline; only a member of its owner team may."""
    _incident_action(env, incident_id, {"action": "step", "by": by, "step": number, "not_needed": not_needed,
                                        "note": note}, as_json, key)


@incident_app.command("close")
@user_errors
def incident_close(env: EnvOption = "local", incident_id: IdOption = "", by: ByOption = "",
                   recovered_at: Annotated[str | None, typer.Option(
                       "--recovered-at", help="when the service was back, ISO 8601 (default: now)")] = None,
                   note: Annotated[str, typer.Option("--note", help="the resolution")] = "",
                   key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Close the incident: the report with the time to detect, respond, recover and notify."""
    when = _parse_time(recovered_at, "--recovered-at")
    _incident_action(env, incident_id, {"action": "close", "by": by, "note": note,
                                        "recovered_at": when.isoformat(timespec="seconds") if when else None}, as_json,
                     key)


@app.command("maintain")
@user_errors
def maintain_command(env: EnvOption = "local",
                     only: Annotated[str | None, typer.Option(
                         "--only", help="some of: partitions, statistics, indexes, slow_queries, accounts, hygiene "
                                        "(comma-separated)")] = None,
                     dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be done; change nothing")] = False,
                     as_json: JsonOption = False) -> None:
    """Run the monthly maintenance (§8.3.1): partitions kept ahead, expired ones archived, proved,
    detached and dropped; statistics; indexes; slow queries; accounts; hygiene. Exits 2 when a
    step stopped on a problem (an archive that does not prove, a partition name that does not parse)."""
    from pcdb.maintenance import check_steps

    steps = check_steps([s.strip() for s in only.split(",") if s.strip()] if only else None)
    config = _use_orchestrator(load_environment(env))
    from flows.maintenance import maintenance

    state = _run_flow(lambda: maintenance(**_spec_args(env), only=steps, dry_run=dry_run, return_state=True),
                      config, env)
    result = _flow_result(state, "the maintenance failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        parts = result["partitions"]
        archived = [a["name"] for a in parts["archived"]] or "none"
        out.print(f"partitions: created {parts['created'] or 'none'}, archived {archived}, "
                  f"dropped {parts['dropped'] or 'none'}; {parts['ahead_months']} month(s) ready ahead", highlight=False)
        out.print(f"statistics: analyzed {len(result['statistics']['analyzed'])}, vacuumed "
                  f"{len(result['statistics']['vacuumed'])}; indexes: {len(result['indexes']['unused'])} unused, "
                  f"{len(result['indexes']['invalid'])} invalid, reindexed {result['indexes']['reindexed'] or 'none'}",
                  highlight=False)
        for key in ("problems", "deferred", "recommended"):
            for line in result[key]:
                out.print(f"{key[:-1] if key != 'deferred' else key}: {line}", highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["problems"]:
        raise typer.Exit(2)


@health_app.callback()
@user_errors
def health_command(ctx: typer.Context, env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Evaluate every health rule once (what the every-minute deployment does) and notify each
    alert transition once. Exits 0 ok, 1 warning, 2 critical (as monitoring plugins do)."""
    if ctx.invoked_subcommand is not None:
        return
    config = _use_orchestrator(load_environment(env))
    from flows.health import health_check

    state = _run_flow(lambda: health_check(**_spec_args(env), return_state=True), config, env)
    result = _flow_result(state, "the health check failed")
    if as_json:
        print(json.dumps({k: result[k] for k in ("status", "checked_at", "metrics", "business", "alerts",
                                                  "silences", "notified")}, indent=2, default=str))
    else:
        out.print(f"status: {result['status']} (checked {result['checked_at']})", highlight=False)
        for a in result["alerts"]:
            out.print(f"{a['state']:9} {a['severity'] or '-':8} {a['rule']}: {a['value']} (threshold {a['threshold']}) "
                      f"since {a['since']} -> {', '.join(a['channels'])}"
                      + (f" [{a['annotation']}]" if a["annotation"] else "")
                      + (f" [silenced until {a['silenced_until']}]" if a["silenced_until"] else ""),
                      highlight=False, markup=False)
        out.print("business: " + ", ".join(f"{k} {v}" for k, v in result["business"].items()), highlight=False)
    raise typer.Exit({"ok": 0, "warning": 1, "critical": 2}[result["status"]])


@health_app.command("silence")
@user_errors
def health_silence(env: EnvOption = "local",
                   rule: Annotated[str, typer.Option("--rule", help="a rule name (see `pcdb health --json`), "
                                                     "or * for all")] = "*",
                   duration: Annotated[str, typer.Option("--for", help="how long, e.g. 2h (at most 7d)")] = "1h",
                   reason: Annotated[str, typer.Option("--reason", help="why: kept with the silence")] = "") -> None:
    """Hold back the notifications of a rule until the silence expires (the alert is still
    evaluated and shown, marked silenced)."""
    from pcdb import health

    spec = load_environment(env)
    if not reason.strip():
        raise PcdbError("--reason is required: a silence without a reason is an alert nobody can judge")
    length = parse_duration(duration)
    if not timedelta(0) < length <= timedelta(days=7):
        raise PcdbError(f"--for {duration}: a silence lasts more than 0 and at most 7d")
    names = {r.name for r in health.catalog(spec)}
    if rule != "*" and rule not in names:
        raise PcdbError(f"--rule {rule}: no such rule in {spec.name}; the rules are {', '.join(sorted(names))}")
    now = clock.now()
    store = health.store_for(spec)
    try:
        number = store.silence(rule, now + length, reason.strip(), now)
    finally:
        store.close()
    out.print(f"silence {number}: {rule} on {spec.name} until {(now + length).isoformat(timespec='seconds')} "
              f"({reason.strip()})", highlight=False, markup=False)


@app.command("checklist")
@user_errors
def checklist_command(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """The daily checklist (§8.1.1): each item checked from data. Exits 2 when an item failed."""
    from flows.daily_checklist import daily_checklist

    result = _run_runbook(env, daily_checklist, "the daily checklist failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        for item in result["items"]:
            out.print(f"{item['result'].upper():5} {item['name']}: {item['evidence']}", highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["status"] == "failed":
        raise typer.Exit(2)


@app.command("capacity")
@user_errors
def capacity_command(env: EnvOption = "local",
                     weeks: Annotated[int | None, typer.Option("--weeks", min=2, max=57, help="weeks of history "
                                                               "analysed (default operations.capacity.weeks, 13)")] = None,
                     as_json: JsonOption = False) -> None:
    """The weekly capacity analysis (§8.1.2, §8.3.1): when storage, connections, CPU, memory and
    transaction IDs reach their limits, the top growing tables, plots and a report. Exits 0 also
    when there is too little history for a forecast (the output says how much is needed)."""
    from flows.capacity import capacity_analysis

    result = _run_runbook(env, capacity_analysis, "the capacity analysis failed", weeks=weeks)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    out.print(result["verdict"], highlight=False, markup=False)
    s, c, k = result["storage"], result["connections"], result["sku"]
    out.print(f"storage: {s['used_bytes']} of {s['limit_bytes']} bytes ({s['used_percent']} %), growth "
              f"{s['growth_bytes_per_day']} bytes/day; days to warning {s['days_to_warning']}, autogrow "
              f"{s['days_to_autogrow']}, read-only {s['days_to_readonly']}", highlight=False, markup=False)
    out.print(f"connections: peak {c['peak']} of {c['limit']}, trend {c['trend_per_week']}/week", highlight=False,
              markup=False)
    out.print(f"sku: {k['recommendation']}{' to ' + k['to'] if k['to'] else ''} ({k['reason']})", highlight=False,
              markup=False)
    for t in result["tables"][:5]:
        out.print(f"table {t['name']}: {t['bytes']} bytes, {t['growth_bytes_per_week']} bytes/week", highlight=False,
                  markup=False)
    out.print(f"storage by week: {result['sparkline']}", highlight=False)
    out.print(f"report: {result['report']}", highlight=False)


@app.command("sla")
@user_errors
def sla_command(env: EnvOption = "local",
                month: Annotated[str | None, typer.Option("--month", help="YYYY-MM (default: this month so far)")] = None,
                as_json: JsonOption = False) -> None:
    """Availability of a month against the plan's 99.9 % (service) and 99.95 % (zone-redundant),
    with the error budget left. Exits 2 when a target is missed or the budget would be spent
    before the month ends."""
    spec = load_environment(env)
    if month is not None:
        from pcdb import sla

        try:
            sla.month_bounds(spec, month, clock.now())
        except ValueError as exc:
            raise PcdbError(str(exc)) from None
    from flows.sla import sla_report

    result = _run_runbook(env, sla_report, "the availability report failed", month=month)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        out.print(f"{result['month']}: {result['availability_percent']} % available ({result['minutes_down']} min down, "
                  f"{result['minutes_unobserved']} unobserved)", highlight=False, markup=False)
        for key, t in result["targets"].items():
            out.print(f"{key} {t['target_percent']} %: budget {t['budget_minutes']} min, left {t['left_minutes']}, "
                      f"{'met' if t['met'] else 'NOT met'}" + (f" — {t['alert']}" if t["alert"] else ""),
                      highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["alerts"] or not all(t["met"] for t in result["targets"].values()):
        raise typer.Exit(2)


@app.command("cost")
@user_errors
def cost_command(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """The cost review (§9): this month so far and projected, per component, against the budget and
    last month. Exits 2 on an alert ($1,600 a month, a 20 % rise: operations.cost)."""
    from flows.cost import cost_review

    result = _run_runbook(env, cost_review, "the cost review failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        out.print(f"{result['month']}: ${result['spent_usd']:,.2f} so far, ${result['projected_usd'] or 0:,.0f} "
                  f"projected, budget ${result['budget_usd']:,.0f}; trend {result['trend']}", highlight=False,
                  markup=False)
        for alert in result["alerts"]:
            out.print(f"ALERT: {alert}", highlight=False, markup=False)
        out.print(f"report: {result['report']}", highlight=False)
    if result["alerts"]:
        raise typer.Exit(2)


KeyOption = Annotated[str | None, typer.Option(
    "--key", help="your OpenSSH key (private, or the .pub of one held by ssh-agent); default ~/.ssh/id_ed25519, "
                  "id_ecdsa or id_rsa")]


def _key_file(key: str | None) -> Path:
    if key:
        path = Path(key).expanduser()
        if not path.is_file():
            raise PcdbError(f"--key {key}: no such file")
        return path
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return path
    raise PcdbError("no signing key: give --key (your OpenSSH private key, or the .pub of a key ssh-agent holds)")


def _public_key(key: Path):
    """The public half of ``key``: the file itself (.pub), its .pub beside it, or ssh-keygen -y."""
    import subprocess

    from pcdb.sshsig import PublicKey, SignatureError

    for candidate in ((key,) if key.suffix == ".pub" else (key.with_name(key.name + ".pub"),)):
        if candidate.is_file():
            try:
                return PublicKey.parse(candidate.read_text())
            except SignatureError as exc:
                raise PcdbError(f"{candidate}: {exc}") from None
    result = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        raise PcdbError(f"cannot read the public half of {key}: {result.stderr.strip()}")
    return PublicKey.parse(result.stdout)


def _signer_of(spec: Environment, key: Path, claimed: str | None) -> str:
    """Whose key it is, by the spec's decisions.signers (a key nobody's is refused here already)."""
    from pcdb.sshsig import PublicKey

    fingerprint = _public_key(key).fingerprint
    owners = [name for name, line in spec.decisions.signers.items() if PublicKey.parse(line).fingerprint == fingerprint]
    if not owners:
        raise PcdbError(f"the key {key} ({fingerprint}) is no one's in {spec.name}'s decisions.signers")
    if claimed and claimed != owners[0]:
        raise PcdbError(f"the key {key} is {owners[0]}'s, not {claimed}'s")
    return owners[0]


def _sign(message: str, key: Path) -> str:
    """``ssh-keygen -Y sign -n pcdb`` over ``message`` (the agent signs when ``key`` is a .pub)."""
    import subprocess
    import tempfile

    from pcdb.decisions import NAMESPACE

    with tempfile.TemporaryDirectory(prefix="pcdb-sign-") as folder:
        path = Path(folder) / "message"
        path.write_text(message)
        result = subprocess.run(["ssh-keygen", "-Y", "sign", "-n", NAMESPACE, "-f", str(key), str(path)],
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise PcdbError(f"ssh-keygen could not sign with {key}: {result.stderr.strip()}")
        return Path(f"{path}.sig").read_text()


@app.command("approve")
@user_errors
def approve_command(env: EnvOption = "local",
                    run: Annotated[str, typer.Option("--run", help="the paused run's id (its UI page shows it)")] = "",
                    step: Annotated[str | None, typer.Option(
                        "--step", help="the step you decide (refused when the run waits for another)")] = None,
                    key: KeyOption = None,
                    as_name: Annotated[str | None, typer.Option("--as", help="your name in decisions.signers "
                                                                             "(default: the key's owner)")] = None,
                    reject: Annotated[bool, typer.Option("--reject", help="reject: nothing is changed")] = False,
                    reason: Annotated[str, typer.Option("--reason", help="why, in a line (kept in the ledger)")] = "",
                    as_json: JsonOption = False) -> None:
    """Decide a step a run waits for: shows what it decides, signs the decision message with your
    OpenSSH key (ssh-keygen -Y sign -n pcdb, or the agent), resumes the run, and prints whether
    the run accepted it (exit 1 with the reason when refused)."""
    from uuid import UUID

    spec = load_environment(env)
    if _use_orchestrator(spec) is None and not os.environ.get("PREFECT_API_URL"):
        raise PcdbError(f"the Prefect server of {spec.name} is not running: a paused run waits there "
                        f"(`pcdb server up --env {env}`)")
    try:
        run_id = UUID(run)
    except ValueError:
        raise PcdbError(f"--run {run!r} is not a run id (a UUID, as the run's UI page shows)") from None
    from flows.runbook import answer, pending_request
    from pcdb.decisions import Request

    with _prefect_settings():
        waiting = pending_request(run_id)
    if waiting is None:
        raise PcdbError(f"run {run} waits for no decision (it is not paused on one)")
    if step and waiting["step"] != step:
        raise PcdbError(f"run {run} waits for {waiting['step']}, not {step}")
    request = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__})
    key_path = _key_file(key)
    signer = _signer_of(spec, key_path, as_name)
    decision = "reject" if reject else "approve"
    err.print(f"{request.step} on {spec.name}, run {run}: {(waiting.get('shown') or '').strip()[:2000]}\n"
              f"plan sha256 {request.plan_sha256}; signing '{decision}' as {signer}", highlight=False, soft_wrap=True)
    message = request.message(signer, decision)
    signature = _sign(message, key_path)
    with _prefect_settings():
        verdict = answer(run_id, waiting, signer, message, signature, decision, reason)
    if as_json:
        print(json.dumps({"run": run, "step": request.step, "signer": signer, "decision": decision, **verdict}))
    if verdict["result"] != "accepted":
        raise PcdbError(f"refused: {verdict['detail']}")
    if not as_json:
        out.print(f"accepted: {verdict['detail']}", highlight=False)


@app.command("unlock")
@user_errors
def unlock_command(env: EnvOption = "local",
                   force: Annotated[bool, typer.Option("--force", help="free it even if its holder may still run")
                                    ] = False) -> None:
    """Free the environment's mutating-runbook slot when its holder is gone (a killed drill or
    install); a holder that may still be running is named and kept unless --force."""
    spec = load_environment(env)
    if _use_orchestrator(spec) is None:
        _ensure_api()
    from flows import exclusion

    record = exclusion.holder(spec.name)
    reason = exclusion.stale_reason(record)
    if record and reason is None and not force:
        raise PcdbError(f"the slot of {spec.name} is held by {exclusion.describe(record)}, which may still be "
                        "running; wait for it, or --force when you know it is gone")
    exclusion.free_slot(spec.name)
    out.print(f"freed the mutating slot of {spec.name}" + (f" ({exclusion.describe(record)}: {reason or 'forced'})"
                                                           if record else ""))


def _phase_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        numbers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise PcdbError(f"--phases {text!r}: give phase numbers 1-8 separated by commas, e.g. 3,4,5") from None
    if not all(1 <= n <= 8 for n in numbers):
        raise PcdbError(f"--phases {text!r}: phases are numbered 1 to 8")
    return numbers


@app.command("plan")
@user_errors
def plan_command(env: EnvOption = "prod",
                 assume_empty: Annotated[bool, typer.Option(
                     "--assume-empty", help="plan against an empty subscription (no credentials needed)")] = False,
                 as_json: JsonOption = False) -> None:
    """Show what the install would create, change (current -> desired) or leave on Azure. Reads only."""
    spec = load_environment(env)
    if spec.target != "azure":
        raise PcdbError(f"environment {spec.name!r} targets {spec.target}; plan reads Azure (use --env prod), "
                        "or `pcdb install --env local --dry-run` for the sandbox")
    _print_warnings(spec)
    from pcdb.azure.desired import desired_resources
    from pcdb.azure.plan import make_plan

    if assume_empty:
        items = make_plan(desired_resources(spec))
    else:  # reads the live subscription: DefaultAzureCredential, subscription from its secret source
        from flows.runbook import runbook_context

        target = runbook_context(spec).target
        items = make_plan(target.desired(), target.reconciler.read)
    if as_json:
        print(json.dumps([{k: v for k, v in i.as_dict().items() if k in ("type", "name", "action", "properties")}
                          for i in items], indent=2, ensure_ascii=False))
        return
    table = Table("phase", "type", "name", "action", title=f"plan for {spec.name} (assuming an empty subscription)")
    phases = {d.id: d.phase for d in desired_resources(spec)}
    for item in items:
        table.add_row(str(phases[item.id]), item.type, item.name, item.action)
    out.print(table)
    counts = {a: sum(i.action == a for i in items) for a in ("create", "update", "conflict", "unchanged")}
    out.print(", ".join(f"{n} to {a}" for a, n in counts.items() if n))


def _one_server(specs: list[Environment]) -> ServerConfig:
    configs = {server_config(s) for s in specs}
    if len(configs) > 1:
        raise PcdbError("these environments name different Prefect servers (orchestrator home/port); "
                        "bring them up one at a time")
    return configs.pop()


@server_app.command("up")
@user_errors
def server_up(env: EnvsOption = ["local"], as_json: JsonOption = False) -> None:  # noqa: B006
    """Start the Prefect server (UI included) and a worker per environment; register every
    deployment and automation. Idempotent: a second call changes nothing and says so."""
    specs = [load_environment(e) for e in env]
    config = _one_server(specs)
    orchestrator = Orchestrator(config)
    changes = []
    if config.managed_postgres:
        from pcdb.sandbox.standalone import ensure_orchestrator_database

        changes.append(ensure_orchestrator_database(config))
    changes.append(orchestrator.up())
    os.environ.update(config.client_env())  # URL and credential, before the first prefect import
    from flows import service

    worker_env = {k: v for k, v in os.environ.items() if k.startswith("PCDB_")}
    worker_env["PREFECT_LOGGING_EXTRA_LOGGERS"] = "pcdb"
    for spec, arg in zip(specs, env):
        spec_path = arg if arg.endswith((".yaml", ".yml")) else None
        if spec.notifications.local_sink:   # before the automations, which send through these blocks
            started, sink_url = orchestrator.start_sink()
            changes += [started, *service.ensure_sink_blocks(spec, sink_url)]
        changes.append(service.ensure_work_pool(spec.work_pool))
        changes += service.register_deployments(spec, spec_path, Path.cwd())
        changes += service.ensure_automations(spec)
        poll = {"PREFECT_WORKER_QUERY_SECONDS": str(max(1, int(spec.orchestrator.worker_poll.total_seconds())))}
        changes.append(orchestrator.start_worker(spec.work_pool, worker_env | poll, Path.cwd()))
    for spec in specs:
        service.wait_for_worker(spec.work_pool)
    _print_changes(changes, as_json)
    if not as_json:
        out.print(f"Prefect UI: {config.ui_url}  (API {config.url}, {config.backend})")
        if any(s.notifications.local_sink for s in specs):
            out.print(f"Alerts: {orchestrator.notifications_log}  (the local sink; tail -f it)")


@server_app.command("status")
@user_errors
def server_status(env: EnvsOption = ["local"], as_json: JsonOption = False) -> None:  # noqa: B006
    """The server, its work pools and workers, the deployments and their next scheduled runs.

    --json prints {url, ui_url, backend, version, work_pools, workers, deployments:[{name,
    schedule, next_runs}], problems}; exit status 3 when the server is not running, 2 when
    something is wrong (a file or folder others could read)."""
    specs = [load_environment(e) for e in env]
    config = _one_server(specs)
    base = {"url": config.url, "ui_url": config.ui_url, "backend": config.backend, "up": False}
    if not Orchestrator(config).is_up():
        if as_json:
            print(json.dumps(base, indent=2))
        else:
            err.print(f"the Prefect server is not running ({config.url}); start it with `pcdb server up`")
        raise typer.Exit(3)
    os.environ.update(config.client_env())
    from flows import service
    from pcdb.orchestrator import environment_privacy

    orchestrator = Orchestrator(config)
    problems = orchestrator.privacy_problems() + [p for s in specs for p in environment_privacy(s)]
    sink = None
    if any(s.notifications.local_sink for s in specs):
        running = orchestrator.sink()
        sink = {"log": str(orchestrator.notifications_log), "running": running is not None}
        if running is None:
            problems.append("the local notification sink is not running: alerts of "
                            f"{', '.join(s.name for s in specs if s.notifications.local_sink)} go nowhere; "
                            f"`pcdb server up --env {' --env '.join(env)}` starts it")
    status = base | {"up": True} | service.service_status(specs) | {"notification_sink": sink, "problems": problems}
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        raise typer.Exit(2 if problems else 0)
    out.print(f"Prefect {status['version']} at {config.ui_url} ({config.backend})")
    for problem in problems:
        err.print(f"[red]problem:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    for w in status["workers"]:
        out.print(f"worker {w['name']} ({w['pool']}): {w['status']}")
    if sink:
        out.print(f"alerts: {sink['log']} (local sink{'' if sink['running'] else ', NOT running'})", soft_wrap=True)
    table = Table("deployment", "schedule", "next runs")
    table.columns[0].overflow = "fold"       # whole names at 80 columns, folded rather than cut
    for d in status["deployments"]:
        table.add_row(d["name"], d["schedule"], "\n".join(d["next_runs"]) or "-")
    out.print(table)
    if problems:
        raise typer.Exit(2)


@server_app.command("down")
@user_errors
def server_down(env: EnvsOption = ["local"]) -> None:  # noqa: B006
    """Stop the workers and the server; history and deployments are kept for the next `up`."""
    config = _one_server([load_environment(e) for e in env])
    stopped = Orchestrator(config).down()
    if config.managed_postgres:
        from pcdb.sandbox.standalone import stop_orchestrator_database

        stopped += stop_orchestrator_database(config)
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command("ui")
@user_errors
def ui_command(env: EnvOption = "local") -> None:
    """Start the environment's Prefect server when it is not running, and print its UI address
    (the API URL is set for whatever port it runs on). `pcdb server up` adds the worker,
    deployments and automations."""
    config = server_config(load_environment(env))
    change = Orchestrator(config).up()
    out.print(f"Prefect UI: {config.ui_url}  ({'already running' if change.action == 'unchanged' else 'started'}; "
              f"`pcdb server down --env {env}` stops it)")


SinceOption = Annotated[str, typer.Option("--since", help="how far back, e.g. 30d, 12h")]


def _ledger_context(env: str):
    spec = load_environment(env)
    _use_orchestrator(spec)
    from flows.runbook import runbook_context

    return spec, runbook_context(spec)


@history_app.callback()
@user_errors
def history(ctx: typer.Context, env: EnvOption = "local", since: SinceOption = "30d",
            flow: Annotated[str | None, typer.Option("--flow", help="only runs of this flow, e.g. dr-drill")] = None,
            as_json: JsonOption = False) -> None:
    """List the runbook runs recorded in the ledger (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        window = parse_duration(since)
    except UnitError as exc:
        raise PcdbError(f"--since {since!r}: {exc}") from None
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    spec, run_ctx = _ledger_context(env)
    with run_ctx.connect() as conn:
        rows = ledger.rows(conn, LEDGER_SCHEMA, clock.now() - window, flow)
    from flows.evidence import spool_for

    pending = spool_for(spec).pending()
    if as_json:
        print(json.dumps({"runs": rows, "spooled": [p.as_json() for p in pending]}, indent=2,
                         default=_json_default, ensure_ascii=False))
        return
    table = Table("#", "flow", "state", "triggered by", "ended", "figures", "report", title=f"runs of {spec.name}")
    for r in rows:
        table.add_row(str(r["seq"]), r["flow"], r["state"], r["triggered_by"],
                      r["ended_at"].isoformat(timespec="seconds") if r["ended_at"] else "-",
                      ledger.figures_line(r["figures"]), r["report_path"] or "-")
    out.print(table)
    if pending:
        out.print(f"{len(pending)} run(s) waiting in {spool_for(spec).path} for the ledger (written by the next run)")


@history_app.command("verify")
@user_errors
def history_verify(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Check the ledger: its hash chain, its anchors outside the database, every report against
    its write-once archive, and every signed decision; name the first row that differs."""
    from pcdb import decisions, ledger
    from pcdb.schema import LEDGER_SCHEMA

    spec, run_ctx = _ledger_context(env)
    target = run_ctx.target
    with run_ctx.connect() as conn:
        result = ledger.verify(conn, LEDGER_SCHEMA, target.ledger_anchors(), target.read_archived_report,
                               decisions.recheck)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    elif result.ok:
        anchored = (f", {result.anchors['anchored']} anchored in {result.anchors['where']}" if result.anchors
                    else ", no evidence store to anchor it in")
        out.print(f"the ledger of {spec.name} is intact: {result.rows} row(s), chain verified{anchored}, "
                  f"{result.reports['checked']} archived report(s) and {result.signatures} signature(s) checked",
                  highlight=False, soft_wrap=True)
    if not as_json:
        for warning in result.warnings:
            err.print(f"warning: {escape(warning)}", highlight=False, soft_wrap=True)
    if not result.ok:
        broken = result.first_broken
        at = f" (run {broken['run_id']}, {broken['flow']})" if broken["run_id"] else ""
        more = f"; {len(result.problems) - 1} more problem(s) (--json lists them)" if len(result.problems) > 1 else ""
        raise PcdbError(f"the ledger of {spec.name} is broken at row {broken['seq']}{at}: {broken['reason']}{more}")


def _print_warnings(spec: Environment) -> None:
    """What is valid but must be known (placeholder keys, a version leaving support), on stderr."""
    from pcdb import specchecks

    for warning in specchecks.warnings(spec):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


@config_app.command("check")
@user_errors
def config_check(env: EnvOption = "prod", as_json: JsonOption = False) -> None:
    """Validate an environment spec and show the server parameters as they will be applied."""
    spec: Environment = load_environment(env)
    applied = spec.desired_parameters()
    _print_warnings(spec)
    if as_json:
        print(json.dumps({n: {"declared": v.declared, "setting": v.setting, "unit": v.unit,
                              "restart": v.needs_restart} for n, v in applied.items()}, indent=2))
        return
    table = Table("parameter", "declared", "applied as", "restart", title=f"{env}: spec is valid")
    for name, value in applied.items():
        table.add_row(name, value.declared, f"{value.setting} {value.unit or ''}".strip(),
                      "yes" if value.needs_restart else "")
    out.print(table)


def main() -> None:
    """Console-script entry point."""

    # Prefect's log shipper prints "--- Error logging to API ---" straight onto our output
    # when the server is gone; the run's outcome is reported by us, once, in one line.
    logging.raiseExceptions = False
    # pcdb's own loggers (e.g. pcdb.azure's progress of long-running operations) in the run logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pcdb")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
