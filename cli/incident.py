"""`pcdb incident ...`: incidents (§8.2) open, status, ack, step, close.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import EnvOption, JsonOption, KeyOption, err, incident_app, out, parse_time, use_orchestrator, user_errors
from cli.signing import key_file, sign, signer_of
from pcdb import clock
from pcdb.config import Environment, load_environment
from pcdb.errors import PcdbError


def _incident_service(env: str):
    """The environment's spec, incident store and orchestrator: an incident outlives a command,
    so it runs on the environment's worker and needs the persistent server."""
    from pcdb.incident import IncidentStore

    spec = load_environment(env)
    config = use_orchestrator(spec)
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
    when = parse_time(began, "--began")
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
        key_path = key_file(key)
        signer_of(spec, key_path, action["by"])
        message = incident.decision_request(spec, action).message(action["by"])
        signed = {"message": message, "signature": sign(message, key_path)}
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

    state = None
    if incident.run_id:        # empty: recorded by its health alert, whose run never started
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
    when = parse_time(recovered_at, "--recovered-at")
    _incident_action(env, incident_id, {"action": "close", "by": by, "note": note,
                                        "recovered_at": when.isoformat(timespec="seconds") if when else None}, as_json,
                     key)
