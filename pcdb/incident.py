"""Incident response (§8.2, R-OPS-4): severities with their response times, the P1 timeline of
§8.2.2 with a deadline and an owner per step, and the closing figures.

An incident is a record (one JSON file per incident, written only by its flow) and a Prefect
flow that waits for typed confirmations (flows/incident.py). Each step's deadline counts from
when the step it follows was done (or fell due): §8.2.2's durations are per step. A step is
confirmed only by a member of its owner team; a conditional step (manual failover, the switch to
the replica) is confirmed as "not needed" with a reason.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pcdb import clock
from pcdb.config import Environment, IncidentSettings
from pcdb.decisions import Request, plan_sha256
from pcdb.errors import PcdbError
from pcdb.orchestrator import server_config
from pcdb.private import private_dir, write_private
from pcdb.units import format_duration


class IncidentError(PcdbError):
    """An action on an incident that is refused (wrong person, unknown step, closed incident)."""


def _now() -> datetime:
    return clock.now()


def _iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") if at else None


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass
class StepState:
    number: int
    key: str
    name: str
    owner: str
    done_at: str | None = None
    done_by: str | None = None
    outcome: str | None = None      # done | not needed
    note: str = ""
    overdue_notified: str | None = None


@dataclass
class Incident:
    id: str
    env: str
    severity: str
    summary: str
    opened_at: str
    opened_by: str
    began: str                       # when the outage began (detected by then)
    respond_within_seconds: float
    run_id: str | None = None
    source_rule: str | None = None   # the health rule that opened it, if one did
    acknowledged_at: str | None = None
    acknowledged_by: str | None = None
    ack_overdue_notified: str | None = None
    steps: list[StepState] = field(default_factory=list)
    updates: list[dict] = field(default_factory=list)     # status updates (§8.2.2 step 8)
    last_update_due_notified: str | None = None
    closed_at: str | None = None
    closed_by: str | None = None
    recovered_at: str | None = None
    resolution: str = ""
    timeline: list[dict] = field(default_factory=list)
    actions: dict[str, dict] = field(default_factory=dict)  # input key -> {"result": applied|refused, "detail"}
    decisions: list[dict] = field(default_factory=list)     # every accepted ack, step and close, signed or claimed

    # -- the record ------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: dict) -> Incident:
        steps = [StepState(**s) for s in data.pop("steps", [])]
        return cls(**data, steps=steps)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def mark(self, what: str, at: datetime | None = None) -> None:
        self.timeline.append({"at": _iso(at or _now()), "event": what})

    # -- deadlines -------------------------------------------------------------------------

    def step(self, number: int) -> StepState:
        for s in self.steps:
            if s.number == number:
                return s
        known = ", ".join(str(s.number) for s in self.steps) or "none (only P1 incidents have steps)"
        raise IncidentError(f"incident {self.id} has no step {number}; its steps are {known}")

    def due(self, settings: IncidentSettings, now: datetime | None = None) -> dict[str, datetime]:
        """When each open deadline falls: "ack", "step N", "update" (status updates, recurring:
        the latest one fallen due by ``now``, or the next one)."""
        out: dict[str, datetime] = {}
        opened = _at(self.opened_at)
        if self.acknowledged_at is None:
            out["ack"] = opened + timedelta(seconds=self.respond_within_seconds)
        base: dict[str, datetime] = {}
        by_key = {s.key: s for s in settings.p1_steps}
        for state in self.steps:
            spec = by_key[state.key]
            if spec.every is not None:
                continue
            after = spec.after or (self.steps[self.steps.index(state) - 1].key if self.steps.index(state) else None)
            start = base.get(after, opened) if after else opened
            deadline = start + (spec.within or timedelta(0))
            base[state.key] = _at(state.done_at) or deadline
            if state.done_at is None:
                out[f"step {state.number}"] = deadline
        for state in self.steps:
            spec = by_key[state.key]
            if spec.every is not None:
                due = max([_at(u["at"]) for u in self.updates] + [opened]) + spec.every
                while now is not None and due + spec.every <= now:
                    due += spec.every
                out["update"] = due
        return out

    def overdue(self, settings: IncidentSettings, now: datetime) -> list[tuple[str, str, str]]:
        """Deadlines passed and not told yet: (what, owner team, message); marks them told."""
        told = []
        for what, at in sorted(self.due(settings, now).items(), key=lambda kv: kv[1]):
            if at > now:
                continue
            if what == "ack":
                if self.ack_overdue_notified:
                    continue
                self.ack_overdue_notified = _iso(now)
                told.append((what, settings.responder, f"{self.severity} incident {self.id} not acknowledged within "
                             f"{format_duration(timedelta(seconds=self.respond_within_seconds))}: {self.summary}"))
            elif what == "update":
                if self.last_update_due_notified == _iso(at):
                    continue
                self.last_update_due_notified = _iso(at)
                update = next(s for s in settings.p1_steps if s.every is not None)
                told.append((what, update.owner, f"incident {self.id}: a status update is due (every "
                             f"{format_duration(update.every)})"))
            else:
                state = self.step(int(what.split()[1]))
                if state.overdue_notified:
                    continue
                state.overdue_notified = _iso(now)
                told.append((what, state.owner, f"incident {self.id} step {state.number} overdue since "
                             f"{_iso(at)}: {state.name} (owner: {state.owner})"))
        for what, owner, _ in told:
            self.mark(f"overdue: {what}; {owner} notified")
        return told

    def next_deadline(self, settings: IncidentSettings, now: datetime) -> datetime | None:
        """The next deadline not yet told (the flow wakes up then at the latest)."""
        due = self.due(settings, now)
        every = next((s.every for s in settings.p1_steps if s.every is not None), None)
        if "update" in due and due["update"] <= now and every is not None:
            due["update"] += every
        return min((at for at in due.values() if at > now), default=None)

    # -- actions ---------------------------------------------------------------------------

    def apply(self, action: dict, settings: IncidentSettings, now: datetime | None = None) -> str:
        """Apply one confirmation (ack, step, update, close); returns what was done, or raises
        IncidentError naming why it is refused."""
        now = now or _now()
        kind, by = action["action"], (action.get("by") or "").strip()
        if not self.open:
            raise IncidentError(f"incident {self.id} is closed since {self.closed_at}")
        member_of = settings.teams_of(by)
        if not member_of:
            raise IncidentError(f"{by or 'nobody'!r} is in no team of operations.incident.teams: only the on-call "
                                "people named there may act on an incident")
        if kind == "ack":
            if self.acknowledged_at:
                return f"already acknowledged by {self.acknowledged_by} at {self.acknowledged_at}"
            self.acknowledged_at, self.acknowledged_by = _iso(now), by
            done = f"acknowledged by {by}"
        elif kind == "step":
            state = self.step(int(action["step"]))
            if state.owner not in member_of:
                members = ", ".join(settings.teams.get(state.owner, [])) or "nobody"
                raise IncidentError(f"step {state.number} ({state.name}) is owned by {state.owner} ({members}); "
                                    f"{by} is in {', '.join(sorted(member_of))}: refused")
            if state.done_at:
                return f"step {state.number} was done already by {state.done_by} at {state.done_at}"
            spec = next(s for s in settings.p1_steps if s.key == state.key)
            if spec.every is not None:
                self.updates.append({"at": _iso(now), "by": by, "note": action.get("note") or ""})
                return f"status update by {by}"
            if action.get("not_needed"):
                if not spec.condition:
                    raise IncidentError(f"step {state.number} ({state.name}) is not conditional: it cannot be "
                                        "skipped")
                if not action.get("note"):
                    raise IncidentError(f"step {state.number} skipped: say why in --note ({spec.condition})")
            state.done_at, state.done_by = _iso(now), by
            state.outcome = "not needed" if action.get("not_needed") else "done"
            state.note = action.get("note") or ""
            done = f"step {state.number} ({state.name}) {state.outcome} by {by}"
        elif kind == "close":
            recovered = action.get("recovered_at")
            if recovered and _at(recovered) < _at(self.began):
                raise IncidentError(f"--recovered-at {recovered} is before the outage began ({self.began})")
            if recovered and _at(recovered) > now:
                raise IncidentError(f"--recovered-at {recovered} is in the future")
            self.closed_at, self.closed_by = _iso(now), by
            self.recovered_at = recovered or self.closed_at
            self.resolution = action.get("note") or ""
            done = f"closed by {by}"
        else:
            raise IncidentError(f"unknown incident action {kind!r}")
        self.mark(done + (f": {action['note']}" if action.get("note") else ""), now)
        return done

    def decision_request(self, spec: Environment, action: dict) -> Request:
        """What an ack, a step or a close is, as a decision: the incident's run, a step name, the
        SHA-256 of what is confirmed, and who may confirm it (a step: its owner team's members;
        ack and close: any team member)."""
        settings = spec.operations.incident
        kind = action["action"]
        step = f"incident-{kind}" + (f"-{int(action['step'])}" if kind == "step" else "")
        if kind == "step":
            owners = spec.team_members([self.step(int(action["step"])).owner])
        else:
            owners = spec.team_members(list(settings.teams))
        subject = {"incident": self.id, "action": kind, "step": action.get("step") if kind == "step" else None,
                   "not_needed": bool(action.get("not_needed")), "note": action.get("note") or "",
                   "recovered_at": action.get("recovered_at")}
        return Request(spec.name, self.run_id or "", step, plan_sha256(subject), owners,
                       spec.install.approval.timeout,
                       unsigned_allowed=spec.decisions.unsigned == "allowed" and not spec.production)

    # -- the closing figures -----------------------------------------------------------------

    def figures(self) -> dict:
        """Time to detect, respond, recover and notify (seconds; None where it did not happen)."""
        began, opened = _at(self.began), _at(self.opened_at)

        def since(start: datetime | None, end: str | None) -> float | None:
            return None if start is None or end is None else round((_at(end) - start).total_seconds(), 1)
        notice = next((s for s in self.steps if s.key == "customer_notice"), None)
        return {"detect_seconds": since(began, self.opened_at), "respond_seconds": since(opened, self.acknowledged_at),
                "recover_seconds": since(began, self.recovered_at),
                "notify_seconds": since(began, notice.done_at) if notice and notice.outcome == "done" else None,
                "respond_within_seconds": self.respond_within_seconds,
                "responded_in_time": None if self.acknowledged_at is None else
                (_at(self.acknowledged_at) - opened).total_seconds() <= self.respond_within_seconds}

    def summary_dict(self, settings: IncidentSettings | None = None) -> dict:
        out = {k: v for k, v in self.to_json().items() if k not in ("actions",)}
        if settings is not None and self.open:
            out["due"] = {k: _iso(v) for k, v in self.due(settings).items()}
        out["figures"] = self.figures()
        return out


def open_incident(env: Environment, severity: str, summary: str, opened_by: str, began: datetime | None = None,
                  source_rule: str | None = None, now: datetime | None = None) -> Incident:
    """A new incident record (not saved yet): P1 gets the §8.2.2 steps."""
    now = now or _now()
    levels = {s.level: s for s in env.operations.incident_severities}
    if severity not in levels:
        raise IncidentError(f"--severity {severity!r}: use one of {', '.join(levels)}")
    if not summary.strip():
        raise IncidentError("--summary is empty: say what is wrong, in a line")
    began = began or now
    if began > now:
        raise IncidentError(f"the outage cannot begin in the future ({began.isoformat()})")
    settings = env.operations.incident
    steps = [StepState(i, s.key, s.name, s.owner) for i, s in enumerate(settings.p1_steps, 1)] if severity == "P1" else []
    incident = Incident(id=f"INC-{now:%Y%m%d-%H%M%S}-{severity}", env=env.name, severity=severity,
                        summary=summary.strip(), opened_at=_iso(now), opened_by=opened_by, began=_iso(began),
                        respond_within_seconds=levels[severity].response.total_seconds(), steps=steps,
                        source_rule=source_rule)
    incident.mark(f"opened by {opened_by}: {severity} ({levels[severity].description}); respond within "
                  f"{format_duration(levels[severity].response)}", now)
    return incident


class IncidentStore:
    """The incidents of one environment: ``<orchestrator home>/incidents/<env>/<id>.json``."""

    def __init__(self, env: Environment, folder: Path | None = None):
        self.folder = folder or server_config(env).home / "incidents" / env.name

    def path(self, incident_id: str) -> Path:
        return self.folder / f"{incident_id}.json"

    def save(self, incident: Incident) -> None:
        tmp = self.path(incident.id).with_suffix(".tmp")
        write_private(tmp, json.dumps(incident.to_json(), indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path(incident.id))

    def load(self, incident_id: str) -> Incident:
        path = self.path(incident_id)
        if not path.exists():
            known = ", ".join(i.id for i in self.all()[-5:]) or "none"
            raise IncidentError(f"no incident {incident_id} in {self.folder} (latest: {known})")
        return Incident.from_json(json.loads(path.read_text()))

    def all(self) -> list[Incident]:
        if not self.folder.exists():
            return []
        return sorted((Incident.from_json(json.loads(p.read_text())) for p in self.folder.glob("INC-*.json")),
                      key=lambda i: i.opened_at)

    def open_ones(self) -> list[Incident]:
        return [i for i in self.all() if i.open]

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Held while an alert decides whether its outage already has an incident and records a
        new one: two health runs at the same moment open one incident, not two."""
        fd = os.open(private_dir(self.folder) / ".opening.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)        # like every file here: its owner's only (server status checks)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)                # closing releases the lock
