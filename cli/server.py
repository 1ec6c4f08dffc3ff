"""`pcdb server ...` and `pcdb ui`: the persistent Prefect server, its workers and deployments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cli import warm
from cli.common import EnvOption, EnvsOption, JsonOption, app, err, one_server, out, print_changes, server_app, user_errors
from pcdb.changes import Change
from pcdb.config import load_environment
from pcdb.orchestrator import Orchestrator, server_config


@server_app.command("up")
@user_errors
def server_up(env: EnvsOption = ["local"], as_json: JsonOption = False) -> None:  # noqa: B006
    """Start the Prefect server (UI included) and a worker per environment; register every
    deployment and automation. Idempotent: a second call changes nothing and says so."""
    specs = [load_environment(e) for e in env]
    config = one_server(specs)
    orchestrator = Orchestrator(config)
    changes = []
    if config.managed_postgres:
        from pcdb.sandbox.standalone import ensure_orchestrator_database

        changes.append(ensure_orchestrator_database(config))
    changes.append(orchestrator.up())
    # Started now, waited for at the end: it imports the commands while the deployments register.
    # (Not before the server is up: a refused `server up` starts nothing.)
    warm_started = warm_start()
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
        if orchestrator.worker_pid(spec.work_pool) is None:     # what a worker that stopped first left
            changes += service.settle_runs_of_a_gone_worker(spec.work_pool)
        changes.append(orchestrator.start_worker(spec.work_pool, worker_env | poll, Path.cwd()))
    for spec in specs:
        service.wait_for_worker(spec.work_pool)
    changes += warm_answers(warm_started)
    print_changes(changes, as_json)
    if not as_json:
        out.print(f"Prefect UI: {config.ui_url}  (API {config.url}, {config.backend})")
        if any(s.notifications.local_sink for s in specs):
            out.print(f"Alerts: {orchestrator.notifications_log}  (the local sink; tail -f it)")


def warm_start() -> list[Change]:
    """The commands' warm process (cli/warm.py), unless PCDB_WARM=0 says commands start cold (then
    `server up` does not start it and `server down` does not stop it)."""
    if os.environ.get("PCDB_WARM") == "0":
        return []
    action, note = warm.start()
    return [Change("warm_start", "pcdb commands", action, notes=(note,))]


WARM_WAIT = 30.0     # seconds `server up` waits for the warm process (its imports: 1-2 s on 2 cores)


def warm_answers(started: list[Change]) -> list[Change]:
    """The warm start's row once it answers, so that the next command is forked from it; if it
    does not within WARM_WAIT, the row says so and commands start cold until it does."""
    if not started or started[0].action != "started":
        return started
    if warm.answers(WARM_WAIT):
        return started
    change = started[0]
    return [Change(change.resource, change.name, change.action,
                   notes=(*change.notes, f"not answering after {WARM_WAIT:g} s: commands start cold until it "
                                         f"does; its log says why ({warm.log_file()})"))]


def warm_status() -> dict:
    """Whether a warm process of this copy of pcdb answers, with today's code."""
    code = warm.ready()
    return {"ready": code == warm.code_fingerprint(), "pid": warm.running_pid(), "socket": warm.socket_path()}


@server_app.command("status")
@user_errors
def server_status(env: EnvsOption = ["local"], as_json: JsonOption = False) -> None:  # noqa: B006
    """The server, its work pools and workers, the deployments and their next scheduled runs.

    --json prints {url, ui_url, backend, version, work_pools, workers, deployments:[{name,
    schedule, next_runs}], problems, serving: {env: {text, at}}, warm_start: {ready, pid, socket}} (the
    commands' warm start, cli/warm.py; serving: only an environment whose
    production runs on a promoted replica, from its latest health run); exit status 3 when the server is not running, 2 when
    something is wrong (a file or folder others could read)."""
    specs = [load_environment(e) for e in env]
    config = one_server(specs)
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
    status = base | {"up": True} | service.service_status(specs) | {"notification_sink": sink, "problems": problems,
                                                                      "serving": _serving(specs),
                                                                      "warm_start": warm_status()}
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        raise typer.Exit(2 if problems else 0)
    out.print(f"Prefect {status['version']} at {config.ui_url} ({config.backend})")
    for problem in problems:
        err.print(f"[red]problem:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    for name, serving in status["serving"].items():
        out.print(f"SERVING {name}: {serving['text']} (health run of {serving['at']})", highlight=False, markup=False,
                  soft_wrap=True)
    for w in status["workers"]:
        out.print(f"worker {w['name']} ({w['pool']}): {w['status']}")
    if sink:
        out.print(f"alerts: {sink['log']} (local sink{'' if sink['running'] else ', NOT running'})", soft_wrap=True)
    ws = status["warm_start"]
    out.print(f"commands: warm start ready (pid {ws['pid']})" if ws["ready"] else
              "commands: start cold (no warm process answers; `pcdb server up` starts one)", highlight=False)
    out.print(deployments_table(status["deployments"]))
    if problems:
        raise typer.Exit(2)


def _serving(specs) -> dict[str, dict]:
    """Per environment whose production runs elsewhere than the spec says (a real region failover
    promoted the replica, until the failback): what the latest health run found, and when. The
    health runbook reads the target every minute; this command only reads its result."""
    from pcdb import health

    found = {}
    for spec in specs:
        store = health.store_for(spec)
        try:
            latest = store.latest()
        finally:
            store.close()
        if latest is not None and latest[1].get("serving"):
            found[spec.name] = {"text": latest[1]["serving"], "at": latest[0].isoformat(timespec="seconds")}
    return found


def deployments_table(deployments: list[dict]) -> Table:
    """The deployments, their schedules and next runs: whole names at 80 columns, folded rather
    than cut."""
    table = Table("deployment", "schedule", "next runs")
    table.columns[0].overflow = "fold"
    for d in deployments:
        table.add_row(d["name"], d["schedule"], "\n".join(d["next_runs"]) or "-")
    return table


@server_app.command("down")
@user_errors
def server_down(env: EnvsOption = ["local"]) -> None:  # noqa: B006
    """Stop the workers and the server; history and deployments are kept for the next `up`."""
    config = one_server([load_environment(e) for e in env])
    stopped = Orchestrator(config).down()
    pid = warm.stop() if os.environ.get("PCDB_WARM") != "0" else None   # as `server up` leaves it
    if pid:
        stopped.append(f"warm start (pid {pid})")
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
