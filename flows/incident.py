"""Incident response (§8.2, R-OPS-4): a Prefect flow per incident, on the environment's worker.

It waits for typed confirmations (IncidentAction, sent by `pcdb incident ack|step|close` or
through the API), tells each step's owner when a deadline passes, and on closing writes the
report with the time to detect, respond, recover and notify; the run ledger keeps the record
and its timeline. A critical health alert opens one by itself (flows/health.py).
"""

from __future__ import annotations

import copy
import time
from datetime import datetime
from typing import Literal

from prefect import get_run_logger
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import flow, runbook_context, stepped
from pcdb import clock, decisions
from pcdb import incident as incidents
from pcdb.config import Environment, load_environment
from pcdb.decisions import Collected, Decision, DecisionRefused

DEPLOYMENT = "incident-{env}"


class IncidentAction(RunInput):
    """A confirmation on an incident: ack, a step (done, or not needed with a reason), close;
    signed by the person who confirms it (`pcdb incident ack|step|close --key ...`)."""

    request_id: str = Field(description="any unique text: `pcdb incident` waits for the verdict on this id")
    action: Literal["ack", "step", "close"] = Field(description="ack (responding), step (a timeline step done, "
                                                                "or not needed), close (recovered)")
    by: str = Field(description="your name, as the spec's incident teams write it")
    step: int | None = Field(None, description="the step's number in the §8.2.2 timeline (action step only)")
    not_needed: bool = Field(False, description="the step was not needed (only a conditional step; say why in note)")
    note: str = Field("", description="what was done, or why the step was not needed")
    recovered_at: str | None = Field(None, description="close only: when the service recovered (ISO 8601 with a time "
                                                       "zone); default now")
    message: str = Field("", description="the decision message you signed (pcdb/decisions.py)")
    signature: str = Field("", description="its OpenSSH signature (-----BEGIN SSH SIGNATURE-----...); empty only "
                                           "where the spec allows unsigned decisions")


@flow(name="incident", **HOOKS)
@alive
def incident(severity: Literal["P1", "P2", "P3", "P4"], summary: str, env: str = "local", spec_path: str | None = None,
             opened_by: str = "a person through the Prefect UI", began: datetime | None = None,
             source_rule: str | None = None, poll_seconds: float = 1.0, resume_id: str | None = None) -> dict:
    """Open an incident and follow it until it is closed.

    Args:
        severity: P1..P4 (operations.incident_severities); P1 follows §8.2.2's steps.
        summary: what is wrong, in a line.
        opened_by: who or what opened it (a person, or the health alert).
        began: when the outage began (default: now); the time to detect counts from it.
        source_rule: the health rule whose critical alert opened it.
        poll_seconds: how often confirmations are looked for.
        resume_id: follow this open incident, already recorded: opened by a health alert (its
            opening is notified by this run), or followed by a run that was killed or crashed
            (nothing is opened or notified again; the record goes on where it stopped).
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
    """
    spec = load_environment(spec_path or env)
    settings = spec.operations.incident
    store = incidents.IncidentStore(spec)
    log = get_run_logger()
    this_run = str(flow_run.get_id() or "")
    announce = not resume_id
    if resume_id:
        inc = _recorded(store, resume_id)
        if not inc.open:
            raise incidents.IncidentError(f"incident {resume_id} is closed since {inc.closed_at}: nothing to resume")
        announce = inc.run_id == this_run and not any(
            t["event"].startswith("followed by run") for t in inc.timeline)   # recorded by its alert: first follower
        inc.mark(f"followed by run {this_run}" if announce else
                 f"followed again by run {this_run} (run {inc.run_id} ended before the incident was closed)")
        inc.run_id = this_run
        store.save(inc)
        severity = inc.severity
    else:
        inc = incidents.open_incident(spec, severity, summary, opened_by, began, source_rule)
        inc.run_id = this_run
        store.save(inc)
    level = "critical" if severity in ("P1", "P2") else "warning"
    channels = list(spec.notifications.channels) if severity == "P1" else None
    if announce:
        notify(spec, level, f"pcdb {spec.name} INCIDENT {inc.id} opened: {severity} {inc.summary}",
               _opening(inc, settings), channels)
    ctx = runbook_context(spec)
    with evidence(spec, ctx, "incident") as ev, stepped() as step:
        handler = IncidentAction.receive(timeout=poll_seconds, poll_interval=poll_seconds, raise_timeout_error=True)
        while inc.open:
            now = clock.now()
            for what, owner, message in inc.overdue(settings, now):
                members = ", ".join(settings.teams.get(owner, [])) or "nobody named"
                step(f"tell {owner}: {what} is overdue", lambda what=what, owner=owner, message=message, members=members:
                     notify(spec, level, f"pcdb {spec.name} INCIDENT {inc.id} OVERDUE: {what}",
                            f"{message}. Owner: {owner} ({members}).", channels))
                log.warning("incident %s: %s overdue, %s told", inc.id, what, owner)
            store.save(inc)
            upcoming = inc.next_deadline(settings, now)
            handler.timeout = max(poll_seconds, min(60.0, (upcoming - now).total_seconds() if upcoming else 60.0))
            try:
                action = handler.next()
            except TimeoutError:
                continue
            try:
                made = _verified(spec, inc, action)
                done = step(f"{action.action}{' step ' + str(action.step) if action.step else ''} by {action.by}",
                            lambda action=action: inc.apply(action.model_dump(), settings))
                inc.decisions.append(made.as_json())
                inc.actions[action.request_id] = {"result": "applied", "detail": done}
                log.info("incident %s: %s", inc.id, done)
            except (incidents.IncidentError, DecisionRefused) as exc:
                inc.actions[action.request_id] = {"result": "refused", "detail": str(exc)}
                inc.mark(f"refused: {action.action} by {action.by}: {exc}")
                log.warning("incident %s: refused: %s", inc.id, exc)
            store.save(inc)
        figures = inc.figures()
        ev.decisions = Collected(accepted=[Decision(**d) for d in inc.decisions])
        path = publish_report(spec, f"incident-{inc.id.lower()}", _report(spec, inc, figures) + "\n" + ledger_link(spec)
                              + "\n", f"incident {inc.id} report")
        ev.report = str(path)
        ev.figures = {"incident": inc.id, "severity": inc.severity, **figures, "timeline": inc.timeline}
        notify(spec, "info", f"pcdb {spec.name} INCIDENT {inc.id} closed",
               f"{inc.summary}: detected in {figures['detect_seconds']}s, responded in {figures['respond_seconds']}s, "
               f"recovered in {figures['recover_seconds']}s, customers told after {figures['notify_seconds']}s. "
               f"Report: {path}", channels)
        return inc.summary_dict() | {"report": str(path)}


def _verified(spec: Environment, inc: incidents.Incident, action: IncidentAction) -> Decision:
    """The action as a decision: signed by the person it names (or claimed, where unsigned ones
    are allowed); refused otherwise, naming why."""
    copy.deepcopy(inc).apply(action.model_dump(), spec.operations.incident)   # its own refusals first, unchanged
    request = inc.decision_request(spec, action.model_dump())
    message = action.message or request.message(action.by)
    made = decisions.verify(request, message, action.signature, spec.decisions.signers)
    if made.signer != action.by:
        raise DecisionRefused(f"signed by {made.signer}, but the confirmation names {action.by}")
    return made


def _opening(inc: incidents.Incident, settings) -> str:
    due = inc.due(settings)
    lines = [f"{inc.severity} opened by {inc.opened_by} at {inc.opened_at}; outage began {inc.began}.",
             f"Respond (pcdb incident ack) by {due['ack'].isoformat(timespec='seconds')}."]
    if inc.severity == "P1":
        lines.append("P1: call management at once (§8.2.1).")
        lines += [f"step {s.number} {s.name} — {s.owner} — due {due[f'step {s.number}'].isoformat(timespec='seconds')}"
                  for s in inc.steps if f"step {s.number}" in due]
    return "\n".join(lines)


def _report(spec: Environment, inc: incidents.Incident, figures: dict) -> str:
    def secs(value) -> str:
        return "-" if value is None else f"{value:.0f} s"
    lines = [f"# Incident {inc.id} on `{spec.name}`: {inc.severity}", "", inc.summary, "",
             "| measure | time |", "|---|---|",
             f"| time to detect (outage began → incident opened) | {secs(figures['detect_seconds'])} |",
             f"| time to respond (opened → acknowledged) | {secs(figures['respond_seconds'])} "
             f"(within {secs(figures['respond_within_seconds'])}: {figures['responded_in_time']}) |",
             f"| time to recover (outage began → recovered) | {secs(figures['recover_seconds'])} |",
             f"| time to notify customers (outage began → notice sent) | {secs(figures['notify_seconds'])} |",
             "", f"- Opened by {inc.opened_by} at {inc.opened_at}; closed by {inc.closed_by} at {inc.closed_at}",
             f"- Resolution: {inc.resolution or '-'}"]
    if inc.steps:
        lines += ["", "## Steps (§8.2.2)", "", "| # | step | owner | done | by | outcome |", "|---|---|---|---|---|---|"]
        lines += [f"| {s.number} | {s.name} | {s.owner} | {s.done_at or 'NOT DONE'} | {s.done_by or '-'} | "
                  f"{s.outcome or '-'}{': ' + s.note if s.note else ''} |" for s in inc.steps]
    lines += ["", "## Timeline", ""] + [f"- {t['at']} — {t['event']}" for t in inc.timeline]
    return "\n".join(lines) + "\n"


def _recorded(store: incidents.IncidentStore, incident_id: str) -> incidents.Incident:
    """The incident's record; a health alert writes it a moment after it starts this run."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return store.load(incident_id)
        except incidents.IncidentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
