"""The ``pcdb`` command: the front door to the runbooks and the local sandbox.

User errors (bad spec, missing binaries, a server that will not start) print one clear
message and exit 1; they never show a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pcdb.changes import Change
from pcdb.config import Environment, load_environment
from pcdb.errors import PcdbError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Product-Change database runbooks (Azure or the local sandbox).")
sandbox_app = typer.Typer(no_args_is_help=True, help="The local sandbox of real PostgreSQL servers.")
config_app = typer.Typer(no_args_is_help=True, help="Environment specs.")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)

EnvOption = Annotated[str, typer.Option("--env", "-e", help="environment name (deployments/NAME.yaml) or a spec path")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our own errors into a message on stderr and exit status 1."""
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PcdbError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    return wrapper


def _sandbox_target(env_name: str):
    from pcdb.targets.sandbox import SandboxTarget

    env = load_environment(env_name)
    if env.target != "sandbox":
        raise PcdbError(f"environment {env.name!r} targets {env.target}, not the sandbox; use --env local")
    return SandboxTarget(env)


def _flow_result(state, failure: str):
    """The flow's return value, or its failure message as a user error."""
    if state.is_failed():
        raise PcdbError(state.message or failure)
    return state.result()


def _spec_args(env: str) -> dict[str, str | None]:
    """--env takes a name or a spec path; the flows take them as env / spec_path."""
    if env.endswith((".yaml", ".yml")):
        return {"env": "local", "spec_path": env}
    return {"env": env, "spec_path": None}


def _print_changes(changes: list[Change], as_json: bool) -> None:
    if as_json:
        print(json.dumps([c.as_dict() for c in changes], indent=2, default=str))
        return
    table = Table("resource", "name", "action", "details")
    for change in changes:
        details = "; ".join([*(f"{k}: {a} -> {b}" for k, (a, b) in change.diff.items()), *change.notes])
        table.add_row(change.resource, change.name, change.action, details)
    out.print(table)
    changed = sum(c.changed for c in changes)
    out.print(f"{changed} changed, {len(changes) - changed} unchanged" if changed else
              "nothing to change: everything is as the spec says")


@sandbox_app.command("up")
@user_errors
def sandbox_up(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Create the sandbox (primary, sync standby, async replica, database) or restart what exists."""
    target = _sandbox_target(env)
    changes = [target.ensure_resource_group(), *target.ensure_server(), target.ensure_replica(),
               target.ensure_database()]
    _print_changes(changes, as_json)


@sandbox_app.command("status")
@user_errors
def sandbox_status(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Show every server of the sandbox: role, endpoint, sync state, timeline, lag."""
    target = _sandbox_target(env)
    if not target.sandbox.exists():
        raise PcdbError(f"no sandbox for {env!r} at {target.sandbox.root}; run `pcdb sandbox up --env {env}`")
    status = target.sandbox.status()
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        return
    table = Table(title=f"sandbox {status['environment']} ({status['root']}) — database {status['database']}")
    for column in ("name", "role", "running", "endpoint", "sync_state", "timeline", "lag_bytes"):
        table.add_column(column, no_wrap=True)
    for node in status["nodes"]:
        table.add_row(node["name"], node["role"], "yes" if node["running"] else "no",
                      f"{node['host']}:{node['port']}", str(node["sync_state"] or "-"),
                      str(node["timeline"]), str(node["lag_bytes"] if node["lag_bytes"] is not None else "-"))
    out.print(table)


@sandbox_app.command("down")
@user_errors
def sandbox_down(env: EnvOption = "local") -> None:
    """Stop every server of the sandbox; the data stays for the next `up`."""
    target = _sandbox_target(env)
    stopped = target.sandbox.down()
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@sandbox_app.command("destroy")
@user_errors
def sandbox_destroy(env: EnvOption = "local",
                    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False) -> None:
    """Stop the sandbox and delete its folder (data, archive, backups, generated passwords)."""
    target = _sandbox_target(env)
    if not yes and sys.stdin.isatty():
        typer.confirm(f"delete {target.sandbox.root} and everything in it?", abort=True)
    removed = target.sandbox.destroy()
    out.print(f"removed {target.sandbox.root}" if removed else f"nothing at {target.sandbox.root}")


@app.command("install")
@user_errors
def install_command(env: EnvOption = "local",
                    phases: Annotated[str | None, typer.Option(help="only these phases, e.g. 3,4,5")] = None,
                    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan, change nothing")] = False,
                    as_json: JsonOption = False) -> None:
    """Run the install runbook (Phases 1-8) as a Prefect flow and print each phase's outcome."""
    load_environment(env)  # a bad spec fails here, before Prefect starts
    selected = _phase_list(phases)
    from flows.install import install  # the CLI is the one pcdb module that may import flows/

    state = install(**_spec_args(env), phases=selected, dry_run=dry_run, return_state=True)
    result = _flow_result(state, "the install failed; see the Prefect run for details")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for number, outcome in (result.get("phases") or {}).items():
        out.print(f"Phase {number}: {outcome}")
    if result.get("report"):
        out.print(f"handover report: {result['report']}")
    if result.get("dry_run"):
        _print_changes([Change(c["resource"], c["name"], c["action"]) for c in result["plan"]], False)


@app.command("verify-backups")
@user_errors
def verify_backups_command(env: EnvOption = "local",
                           restore_test: Annotated[bool, typer.Option("--restore-test", help="also restore and prove the latest backup")] = False,
                           as_json: JsonOption = False) -> None:
    """Run the backup-verification runbook (daily checks; with --restore-test a real restore)."""
    load_environment(env)
    from flows.backup_verification import verify_backups

    state = verify_backups(**_spec_args(env), restore=restore_test, return_state=True)
    result = _flow_result(state, "backup verification failed")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        out.print(f"{key}: {value}")


@app.command("drill")
@user_errors
def drill_command(scenario: Annotated[str, typer.Argument(help="zone | region | corruption")],
                  env: EnvOption = "local",
                  mode: Annotated[str, typer.Option(help="planned | forced (zone drill)")] = "forced",
                  yes: Annotated[bool, typer.Option("--yes", help="give approvals by flag (sandbox only)")] = False,
                  confirm: Annotated[bool, typer.Option("--confirm", help="required on production")] = False,
                  stall_replica: Annotated[bool, typer.Option("--stall-replica", help="region drill: cut the replica's link first")] = False,
                  as_json: JsonOption = False) -> None:
    """Run a DR drill (zone failover, region failover, data corruption) and print measured RTO/RPO."""
    if scenario not in ("zone", "region", "corruption"):
        raise PcdbError(f"unknown drill {scenario!r}: use zone, region or corruption")
    if mode not in ("planned", "forced"):
        raise PcdbError(f"--mode {mode!r}: use planned or forced")
    load_environment(env)
    from flows.dr_drill import dr_drill

    state = dr_drill(scenario=scenario, **_spec_args(env), mode=mode, confirm=confirm, yes=yes,
                     stall_replica=stall_replica, return_state=True)
    result = _flow_result(state, "the drill failed")
    keys = ("scenario", "mode", "rto_seconds", "rpo_rows_lost", "rows_in_doubt", "target_rto_seconds",
            "target_rpo_seconds", "met", "topology_restored", "report")
    if as_json:
        print(json.dumps({k: result[k] for k in keys} | {"timeline": result["timeline"]}, indent=2, default=str))
        return
    for key in keys:
        out.print(f"{key}: {result[key]}")


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
                 assume_empty: Annotated[bool, typer.Option("--assume-empty", help="plan against an empty subscription (no credentials needed)")] = False,
                 as_json: JsonOption = False) -> None:
    """Show what the install would create, change (current -> desired) or leave on Azure. Reads only."""
    spec = load_environment(env)
    if spec.target != "azure":
        raise PcdbError(f"environment {spec.name!r} targets {spec.target}; plan reads Azure (use --env prod), "
                        "or `pcdb install --env local --dry-run` for the sandbox")
    from pcdb.azure.desired import desired_resources
    from pcdb.azure.plan import make_plan

    if assume_empty:
        items = make_plan(desired_resources(spec))
    else:  # reads the live subscription: DefaultAzureCredential, subscription from its secret source
        from flows.install import runbook_context

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


@config_app.command("check")
@user_errors
def config_check(env: EnvOption = "prod", as_json: JsonOption = False) -> None:
    """Validate an environment spec and show the server parameters as they will be applied."""
    spec: Environment = load_environment(env)
    applied = spec.desired_parameters()
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
    import os

    # pcdb's own loggers (e.g. pcdb.azure's progress of long-running operations) in the run logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pcdb")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
