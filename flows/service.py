"""pcdb as a service, the Prefect side: work pools, deployments, automations and the server's
status. The processes themselves (server, workers) are pcdb/orchestrator.py; only this module
talks to Prefect's API about them.

Config as code: the deployments are prefect.yaml, rendered for an environment with what its
spec says (name, work pool, time zone, restore-test weekday); the automations are built here
from the spec (notification routing, run limits, backup freshness).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from prefect import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule
from prefect.events.actions import CancelFlowRun, ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema

from flows import heartbeat
from pcdb import clock
from pcdb.changes import Change
from pcdb.config import CapacitySettings, Environment
from pcdb.errors import PcdbError
from pcdb.paths import PREFECT_FILE

PROJECT_FILE = PREFECT_FILE
WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")  # cron: 0 = Sunday
_PLACEHOLDER = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
FINAL_EVENTS = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Crashed", "Cancelled", "Cancelling",
                                                  "Paused", "Suspended")}


BY_TAG = "pcdb-by:"  # who asked for a deployment run through the pcdb CLI


def env_tag(spec: Environment) -> str:
    """The tag every run of an environment carries: automations match on it."""
    return f"pcdb-env:{spec.name}"


# -- deployments ---------------------------------------------------------------------------

def deployment_variables(spec: Environment) -> dict[str, str]:
    """What prefect.yaml's {{ $PCDB_* }} placeholders stand for in this environment."""
    restore = WEEKDAYS.index(spec.backup.verification.restore_test_weekday)
    return {"PCDB_ENV": spec.name, "PCDB_TIMEZONE": spec.backup.window.timezone,
            "PCDB_RESTORE_DAY": str(restore),
            "PCDB_DAILY_DAYS": ",".join(str(d) for d in range(7) if d != restore),
            "PCDB_MAINTENANCE_CRON": spec.operations.maintenance.cron,
            "PCDB_HEALTH_CRON": health_cron(spec),
            "PCDB_CAPACITY_CRON": (spec.operations.capacity or CapacitySettings()).cron}


def health_cron(spec: Environment) -> str:
    """monitoring.health.every as a cron ("" = not scheduled: the health deployment is manual)."""
    minutes = int(spec.monitoring.health.every.total_seconds() // 60)
    if minutes <= 0:
        return ""
    return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *" if minutes < 60 else f"0 */{minutes // 60} * * *"


def _render(value, variables: dict[str, str]):
    if isinstance(value, str):
        def fill(match: re.Match) -> str:
            if match.group(1) not in variables:
                raise PcdbError(f"{PROJECT_FILE.name}: unknown placeholder {{{{ ${match.group(1)} }}}}; "
                                f"pcdb fills {', '.join(sorted(variables))}")
            return variables[match.group(1)]
        return _PLACEHOLDER.sub(fill, value)
    if isinstance(value, dict):
        return {k: _render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, variables) for v in value]
    return value


def deployment_definitions(spec: Environment, spec_path: str | None, working_dir: Path) -> list[dict]:
    """prefect.yaml's deployments for ``spec``: names, pool, schedules and parameters filled in.

    A spec given as a file (not a name under deployments/) is passed to the runs as spec_path."""
    project = yaml.safe_load(PROJECT_FILE.read_text())
    out = []
    for raw in project["deployments"]:
        item = _render(raw, deployment_variables(spec))
        item["schedules"] = [s for s in item.get("schedules", []) if s.get("cron")]   # "" = not scheduled
        if spec_path:
            item["parameters"] = {**item.get("parameters", {}), "spec_path": str(Path(spec_path).absolute())}
        item["tags"] = [*item.get("tags", []), env_tag(spec)]
        # Prefect's engine without Prefect's run heartbeat: pcdb's flows send their own (flows/engine.py).
        item["job_variables"] = {"working_dir": str(working_dir),
                                 "command": f"{shlex.quote(sys.executable)} -m flows.engine"}
        out.append(item)
    return out


def _flow_of(entrypoint: str):
    from prefect.utilities.importtools import import_object

    return import_object(entrypoint)


def _fingerprint(item: dict) -> str:
    return "pcdb-" + hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:16]


def ensure_work_pool(pool: str) -> Change:
    """The environment's process work pool (created once)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return Change("work_pool", pool, "unchanged", notes=("process",))
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                   description="pcdb runbooks of one environment"))
            return Change("work_pool", pool, "created", notes=("process",))


def register_deployments(spec: Environment, spec_path: str | None, working_dir: Path) -> list[Change]:
    """Create or update the environment's deployments; one whose definition did not change is
    left alone (its definition's hash is the deployment's version)."""
    changes = []
    with get_client(sync_client=True) as client:
        for item in deployment_definitions(spec, spec_path, working_dir):
            flow = _flow_of(item["entrypoint"])
            version = _fingerprint(item)
            try:
                existing = client.read_deployment_by_name(f"{flow.name}/{item['name']}")
            except ObjectNotFound:
                existing = None
            if existing is not None and existing.version == version:
                changes.append(Change("deployment", item["name"], "unchanged"))
                continue
            flow_id = client.create_flow_from_name(flow.name)
            schedules = [DeploymentScheduleCreate(schedule=CronSchedule(cron=s["cron"], timezone=s["timezone"],
                                                                        day_or=s.get("day_or", True)))
                         for s in item.get("schedules", [])]
            client.create_deployment(
                flow_id=flow_id, name=item["name"], version=version, schedules=schedules,
                parameters=item.get("parameters", {}), description=item.get("description"),
                work_pool_name=item["work_pool"]["name"], tags=item["tags"], entrypoint=item["entrypoint"],
                parameter_openapi_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
                enforce_parameter_schema=True, job_variables=item["job_variables"], pull_steps=[])
            changes.append(Change("deployment", item["name"], "updated" if existing else "created",
                                  notes=tuple(f"{s['cron']} ({s['timezone']})" for s in item.get("schedules", []))))
    return changes


# -- automations ---------------------------------------------------------------------------

def _blocks(spec: Environment, level: str) -> tuple[list, list[str]]:
    """Block document ids of the channels routed for ``level``, and the channels without a block."""
    from prefect.blocks.core import Block

    found, missing = [], []
    for name in spec.notifications.routing.get(level, []):
        block = spec.notifications.channels[name].block
        try:
            found.append(Block.load(block)._block_document_id)
        except (ValueError, KeyError):
            missing.append(f"{name} ({block})")
    return found, missing


def ensure_sink_blocks(spec: Environment, url: str) -> list[Change]:
    """Point every channel's custom-webhook block at the local sink (``notifications.local_sink``):
    created where missing, rewritten where it points elsewhere, left alone when it already points
    there. The message keeps its channel, subject and body."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    changes = []
    for name, channel in spec.notifications.channels.items():
        block_name = channel.block.split("/", 1)[1]
        wanted = {"channel": name, "subject": "{{subject}}", "body": "{{body}}"}
        try:
            current = CustomWebhookNotificationBlock.load(block_name)
            if current.url == url and current.json_data == wanted and current.method == "POST":
                changes.append(Change("notification_block", channel.block, "unchanged", notes=("local sink",)))
                continue
            action = "updated"
        except ValueError:
            action = "created"
        CustomWebhookNotificationBlock(name=f"pcdb {spec.name} {name}", url=url, method="POST", json_data=wanted,
                                       timeout=5).save(block_name, overwrite=True)
        changes.append(Change("notification_block", channel.block, action, notes=(f"{name} -> the local sink",)))
    return changes


def _related(spec: Environment, flow: str | None = None) -> list[dict]:
    related = [{"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{env_tag(spec)}"}]
    if flow:
        related.append({"prefect.resource.role": "flow", "prefect.resource.name": flow})
    return related


def automation_names(spec: Environment) -> dict[str, str]:
    return {"failed": f"pcdb-{spec.name}: run failed or crashed",
            "stale": f"pcdb-{spec.name}: no completed backup verification",
            "dead-man": f"pcdb-{spec.name}: no health report",
            "silent": f"pcdb-{spec.name}: run went silent",
            **{f"limit-{flow}": f"pcdb-{spec.name}: {flow} running too long" for flow in spec.orchestrator.limits()}}


def desired_automations(spec: Environment) -> tuple[list[AutomationCore], list[str]]:
    """The automations as code, and the channels that could not be wired (no block)."""
    blocks, missing = _blocks(spec, "critical")
    names = automation_names(spec)
    link = "{{ flow_run|ui_url }}"
    body = ("Run {{ flow_run.name }} of {{ flow.name }} on " + spec.name +
            " entered {{ flow_run.state.name }}: {{ flow_run.state.message }} " + link)
    notify = [SendNotification(block_document_id=b, subject=f"pcdb {spec.name}: " +
                               "{{ flow.name }} {{ flow_run.state.name }}", body=body) for b in blocks]
    out = [AutomationCore(
        name=names["failed"], description="Any pcdb runbook run Failed or Crashed: critical notification.",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                             match={"prefect.resource.id": "prefect.flow-run.*"},
                             match_related=_related(spec), posture=Posture.Reactive, threshold=1,
                             within=timedelta(0)),
        actions=notify, enabled=True)] if notify else []
    silent = heartbeat.EVERY * heartbeat.SILENT_AFTER
    # A run whose process vanished with its machine (worker and all) sends nothing more: after
    # three missed heartbeats it is Crashed, which the automation above pages for, instead of
    # showing Running for ever.
    out.append(AutomationCore(
        name=names["silent"], description=f"A pcdb run with no heartbeat for {silent}: marked Crashed.",
        trigger=EventTrigger(after={heartbeat.EVENT}, expect={heartbeat.EVENT, *FINAL_EVENTS, "prefect.flow-run.Refused"},
                             match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=_related(spec),
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                             within=silent),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {silent}: its process (or its machine) is gone")],
        enabled=True))
    stale_after = spec.backup.verification.max_age
    out += [_no_completed_run(spec, names["stale"], "backup-verification", stale_after, blocks,
                              "backup verification", f"pcdb {spec.name}: backups NOT verified",
                              f"No backup verification of {spec.name} completed in the last {stale_after}; check "
                              f"the worker of pool {spec.work_pool} and the backup-verification runs.")] if blocks else []
    silent_after = spec.monitoring.health.dead_man_after
    out += [_no_completed_run(spec, names["dead-man"], "health", silent_after, blocks,
                              "health run (a dead-man's switch)", f"pcdb {spec.name}: NO health report",
                              f"No health run of {spec.name} completed in the last {silent_after}: nothing is "
                              f"watching the database. Check the worker of pool {spec.work_pool} and the health "
                              "deployment.")] if blocks and health_cron(spec) else []
    for flow, limit in spec.orchestrator.limits().items():
        out.append(AutomationCore(
            name=names[f"limit-{flow}"], description=f"A {flow} run Running longer than {limit}: cancelled and notified.",
            trigger=EventTrigger(after={"prefect.flow-run.Running"}, expect=FINAL_EVENTS,
                                 match={"prefect.resource.id": "prefect.flow-run.*"},
                                 match_related=_related(spec, flow), for_each={"prefect.resource.id"},
                                 posture=Posture.Proactive, threshold=1, within=limit),
            actions=[CancelFlowRun(), *(SendNotification(
                block_document_id=b, subject=f"pcdb {spec.name}: {flow} cancelled after {limit}",
                body=f"A {flow} run on {spec.name} ran longer than its limit of {limit} and was cancelled. "
                     + link) for b in blocks)],
            enabled=True))
    return out, missing


def _no_completed_run(spec: Environment, name: str, flow: str, within: timedelta, blocks: list, what: str,
                      subject: str, body: str) -> AutomationCore:
    """A proactive automation: no completed run of ``flow`` within ``within`` -> the critical channels."""
    return AutomationCore(
        name=name, description=f"No completed {what} for {within}: critical notification.",
        trigger=EventTrigger(expect={"prefect.flow-run.Completed"}, match={"prefect.resource.id": "prefect.flow-run.*"},
                             match_related=_related(spec, flow), posture=Posture.Proactive, threshold=1, within=within),
        actions=[SendNotification(block_document_id=b, subject=subject, body=body) for b in blocks], enabled=True)


def _comparable(automation) -> dict:
    """What the spec decides of an automation (not the ids the server gives it)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "id"}
        if isinstance(value, list):
            return sorted((strip(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
        return value
    return strip(automation.model_dump(mode="json", include={"name", "description", "trigger", "actions",
                                                             "enabled"}))


def ensure_automations(spec: Environment) -> list[Change]:
    """Create what is missing, update what differs, leave the rest (by name)."""
    desired, missing = desired_automations(spec)
    changes = []
    with get_client(sync_client=True) as client:
        for automation in desired:
            existing = client.read_automations_by_name(automation.name)
            if existing and _comparable(existing[0]) == _comparable(automation):
                changes.append(Change("automation", automation.name, "unchanged"))
                continue
            if existing:
                # Not update_automation: it sends only the fields set explicitly, and an action's
                # `type` is a default, so the server turns every action into "do-nothing".
                client.delete_automation(existing[0].id)
            client.create_automation(automation)
            changes.append(Change("automation", automation.name, "updated" if existing else "created"))
    if missing:
        changes.append(Change("automation", f"pcdb-{spec.name} critical channels", "conflict",
                              notes=(f"no notification block for {', '.join(missing)}: create it, then "
                                     f"`pcdb server up --env {spec.name}` again",)))
    return changes


def automation_notifies(spec: Environment) -> bool:
    """The server's 'run failed or crashed' automation exists and sends (the flow's own failure
    hook then stays quiet, so nobody is told twice)."""
    try:
        with get_client(sync_client=True) as client:
            found = client.read_automations_by_name(automation_names(spec)["failed"])
    except Exception:  # noqa: BLE001 - no server, no automation
        return False
    return bool(found and found[0].enabled and found[0].actions)


# -- workers and status -------------------------------------------------------------------

def settle_runs_of_a_gone_worker(pool: str) -> list[Change]:
    """What the worker of ``pool`` left behind when it stopped without finishing (`pcdb server
    down` mid-run, a killed worker, a restarted machine), settled before a new worker starts.

    - A run it had started (Running, Paused in its process for a decision, or Pending with its
      process) whose process is gone: marked Crashed. Nothing else would: the server's "went
      silent" automation did not fire for runs that fell silent while the server was down, and
      such a run looked Running (or waiting for a decision) for good: an incident's actions
      waited two minutes for a dead run, a signed decision would reach nobody. Crashed, the
      incident's next action starts a run that takes it over.
    - A run it had taken but never started (Pending, no process): Cancelled.
    - Runs the schedule made while no worker ran: the new worker would start every one of them at
      once (a health run a minute: dozens). The latest missed run of each deployment stands for
      its deployment and runs; the earlier ones are Cancelled.

    Called by `pcdb server up` only when no worker of the pool runs, so every run of the pool was
    started by a worker of this machine's: a process it names that still runs (or whose pid was
    reused) is left alone."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.states import Cancelled, Crashed

    from pcdb.process import alive

    now, changes = clock.now(), []
    missed: dict[object, list] = {}         # deployment -> [(due, run)]
    never_started: dict[object, list] = {}  # deployment -> [run]
    with get_client(sync_client=True) as client:
        runs, page = [], 200
        while len(runs) % page == 0:        # read them all before any changes state
            more = client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.RUNNING, StateType.PENDING, StateType.PAUSED, StateType.SCHEDULED]))),
                limit=page, offset=len(runs))
            runs += more
            if not more:
                break
        names: dict[object, str] = {}

        def deployment(deployment_id) -> str:
            if deployment_id not in names:
                try:
                    names[deployment_id] = client.read_deployment(deployment_id).name if deployment_id else "-"
                except ObjectNotFound:      # deleted since: the run is settled all the same
                    names[deployment_id] = f"deployment {deployment_id} (deleted)"
            return names[deployment_id]

        for run in runs:
            if run.state.type == StateType.SCHEDULED:
                due = run.state.state_details.scheduled_time or run.expected_start_time
                if run.deployment_id and due is not None and due <= now:
                    missed.setdefault(run.deployment_id, []).append((due, run))
                continue
            if run.state.type == StateType.PAUSED and run.state.state_details.pause_reschedule:
                continue     # suspended: it left its process on purpose, and a resume schedules it again
            pid = (run.infrastructure_pid or "").rsplit(":", 1)[-1]
            if pid.isdigit() and alive(int(pid)):
                continue
            if run.state.type == StateType.PENDING and not pid:
                never_started.setdefault(run.deployment_id, []).append(run)
                continue
            message = f"its process ({pid or 'unknown'}) ended with the worker of {pool}, which stopped first"
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            changes.append(Change("flow_run", f"{deployment(run.deployment_id)} {run.name} {run.id}", "crashed",
                                  diff={"state": (run.state.name, "Crashed")}, notes=(message,)))
        for deployment_id, taken in never_started.items():
            message = f"never started: the worker of {pool} that took it stopped first"
            for run in taken:
                client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
            changes.append(Change("flow_runs", deployment(deployment_id), "cancelled",
                                  diff={"never started": (len(taken), 0)},
                                  notes=(f"{len(taken)} run(s) the stopped worker had taken but never started",)))
        for deployment_id, late in missed.items():
            late.sort(key=lambda pair: pair[0])
            (latest_due, _), earlier = late[-1], [run for _, run in late[:-1]]
            if not earlier:
                continue
            when = latest_due.isoformat(timespec="seconds")
            message = f"missed while no worker of {pool} ran; the latest missed run (due {when}) runs for it"
            for run in earlier:
                client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
            changes.append(Change("missed_runs", deployment(deployment_id), "cancelled", diff={"runs": (len(late), 1)},
                                  notes=(f"{len(earlier)} earlier missed run(s) cancelled; the latest, due {when}, "
                                         "runs now",)))
    return changes


def wait_for_worker(pool: str, timeout: float = 60) -> None:
    """Until a worker of ``pool`` has reported to the API (it polls, then heartbeats)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            workers = [w for w in client.read_workers_for_work_pool(pool) if str(w.status).endswith("ONLINE")]
            if workers:
                return
            if time.monotonic() > deadline:
                raise PcdbError(f"no worker of work pool {pool} reported to the server within {timeout:.0f}s")
            time.sleep(0.5)


def next_runs(schedule: dict, count: int = 3, after: datetime | None = None) -> list[str]:
    """The next start times of a cron schedule in its own time zone (Prefect's own cron rules,
    DST included)."""
    import anyio

    cron = CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"), day_or=schedule.get("day_or", True))
    from prefect.server.schemas.schedules import CronSchedule as ServerCron

    server = ServerCron(cron=cron.cron, timezone=cron.timezone, day_or=cron.day_or)
    dates = anyio.run(lambda: server.get_dates(n=count, start=after or clock.now()))
    return [d.isoformat() for d in dates]


def service_status(specs: list[Environment]) -> dict:
    """Work pools, workers and deployments of the given environments, with their next runs."""
    from prefect import __version__
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    pools, workers, deployments = [], [], []
    with get_client(sync_client=True) as client:
        # Only these environments' deployments: an unfiltered read returns one page (200) of all.
        every_deployment = client.read_deployments(work_pool_filter=WorkPoolFilter(
            name=WorkPoolFilterName(any_=[spec.work_pool for spec in specs])))
        for spec in specs:
            try:
                pool = client.read_work_pool(spec.work_pool)
            except ObjectNotFound:
                continue
            pools.append({"name": pool.name, "type": pool.type, "status": str(pool.status.value if pool.status else None)})
            for w in client.read_workers_for_work_pool(spec.work_pool):
                workers.append({"name": w.name, "pool": spec.work_pool, "status": str(w.status.value),
                                "last_heartbeat": w.last_heartbeat_time.isoformat() if w.last_heartbeat_time else None})
            for d in every_deployment:
                if d.work_pool_name != spec.work_pool:
                    continue
                schedules = [s.schedule for s in d.schedules if s.active]
                runs = []
                for s in schedules:
                    runs += next_runs({"cron": s.cron, "timezone": s.timezone, "day_or": s.day_or})
                deployments.append({"name": d.name, "flow": _flow_name(client, d.flow_id),
                                    "schedule": ", ".join(f"{s.cron} ({s.timezone})" for s in schedules) or "manual",
                                    "next_runs": sorted(runs)[:3], "paused": d.paused})
    return {"version": __version__, "work_pools": pools, "workers": workers,
            "deployments": sorted(deployments, key=lambda d: d["name"])}


def _flow_name(client, flow_id) -> str:
    return client.read_flow(flow_id).name


def start_deployment_run(flow: str, deployment: str, parameters: dict | None = None) -> str:
    """Ask the server for a run of ``flow/deployment`` (its worker picks it up); the run id."""
    import getpass
    import socket

    from prefect.deployments import run_deployment

    try:
        run = run_deployment(f"{flow}/{deployment}", parameters=parameters or {}, timeout=0, as_subflow=False,
                             tags=[f"{BY_TAG}{getpass.getuser()}@{socket.gethostname()}"])
    except ObjectNotFound:
        raise PcdbError(f"no deployment {flow}/{deployment} on the server; run `pcdb server up` for its "
                        "environment first") from None
    return str(run.id)


def wait_for_runs(run_ids: list[str], timeout: float = 3600, poll: float = 1.0) -> dict[str, tuple[str, str | None]]:
    """Poll until every run is in a final state; run id -> (state name, message)."""
    deadline = time.monotonic() + timeout
    done: dict[str, tuple[str, str | None]] = {}
    with get_client(sync_client=True) as client:
        while True:
            for run_id in run_ids:
                if run_id in done:
                    continue
                current = client.read_flow_run(run_id)
                if current.state and current.state.is_final():
                    done[run_id] = (current.state.name, current.state.message)
            if len(done) == len(run_ids):
                return done
            if time.monotonic() > deadline:
                late = [r for r in run_ids if r not in done]
                raise PcdbError(f"run(s) {', '.join(late)} did not finish within {timeout:.0f}s")
            time.sleep(poll)
