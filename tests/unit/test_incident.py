"""The incident record (§8.2): the P1 timeline's deadlines, who may confirm what, the closing figures."""

from datetime import datetime, timedelta, timezone

import pytest

from pcdb.config import DEPLOYMENTS, load_environment
from pcdb.incident import IncidentError, open_incident
from tests.unit.test_config import problems_of, spec_with

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
M = timedelta(minutes=1)


@pytest.fixture(scope="module")
def env():
    return load_environment("local")


def act(incident, env, at, action, by, **more):
    return incident.apply({"action": action, "by": by, **more}, env.operations.incident, now=at)


def test_a_p1_follows_the_8_2_2_timeline_each_step_timed_from_the_one_it_follows(env):
    inc = open_incident(env, "P1", "service completely down", "health alert", began=T0 - 2 * M, now=T0)
    settings = env.operations.incident
    assert [s.owner for s in inc.steps] == ["ops team", "ops team", "DBA", "DBA", "DBA", "DBA", "CS team", "ops team"]
    due = inc.due(settings)
    assert due["ack"] == T0 + 15 * M                                   # P1: respond within 15 min
    assert due["step 1"] == T0 + 5 * M and due["step 2"] == T0 + 5 * M  # triage 5 min, then call at once
    assert due["step 3"] == T0 + 15 * M and due["step 4"] == T0 + 17 * M
    assert due["step 7"] == T0 + 35 * M                                # customer notice: 30 min after triage
    assert due["update"] == T0 + 30 * M                                # status updates every 30 min

    act(inc, env, T0 + 3 * M, "step", "ops-oncall", step=1, note="primary does not answer")
    due = inc.due(settings)
    assert due["step 2"] == T0 + 3 * M and due["step 3"] == T0 + 13 * M and due["step 7"] == T0 + 33 * M

    told = inc.overdue(settings, T0 + 14 * M)
    assert [t[:2] for t in told] == [("step 2", "ops team"), ("step 3", "DBA")]
    assert "overdue since 2026-11-27T10:13:00+00:00: first analysis of the cause (owner: DBA)" in told[1][2]
    assert inc.overdue(settings, T0 + 14 * M) == []                    # each deadline is told once
    assert inc.next_deadline(settings, T0 + 14 * M) == T0 + 15 * M     # the ack


def test_overdue_deadlines_are_told_once_each_at_their_time(env):
    inc = open_incident(env, "P1", "down", "a person", now=T0)
    settings = env.operations.incident
    assert inc.overdue(settings, T0 + 4 * M) == []
    assert [t[:2] for t in inc.overdue(settings, T0 + 5 * M)] == [("step 1", "ops team"), ("step 2", "ops team")]
    assert inc.overdue(settings, T0 + 6 * M) == []
    assert [t[:2] for t in inc.overdue(settings, T0 + 16 * M)] == [("ack", "ops team"), ("step 3", "DBA")]
    assert [t[0] for t in inc.overdue(settings, T0 + 31 * M)] == ["step 4", "step 5", "update"]
    assert [t[0] for t in inc.overdue(settings, T0 + 61 * M)] == ["step 6", "step 7", "update"]  # every 30 min


def test_a_step_confirmed_by_someone_who_is_not_its_owner_is_refused(env):
    inc = open_incident(env, "P1", "down", "a person", now=T0)
    with pytest.raises(IncidentError, match=r"step 3 .* owned by DBA \(dba-oncall, dba-lead\); ops-oncall is in ops team"):
        act(inc, env, T0 + M, "step", "ops-oncall", step=3)
    with pytest.raises(IncidentError, match="'mallory' is in no team"):
        act(inc, env, T0 + M, "ack", "mallory")
    with pytest.raises(IncidentError, match="not conditional"):
        act(inc, env, T0 + M, "step", "dba-oncall", step=3, not_needed=True, note="no")
    with pytest.raises(IncidentError, match="say why"):
        act(inc, env, T0 + M, "step", "dba-oncall", step=6, not_needed=True)
    with pytest.raises(IncidentError, match="no step 9"):
        act(inc, env, T0 + M, "step", "dba-oncall", step=9)
    assert inc.steps[2].done_at is None and inc.acknowledged_at is None   # nothing was recorded
    assert "step 6" in act(inc, env, T0 + M, "step", "dba-lead", step=6, not_needed=True, note="zone failure only")


def test_closing_gives_the_times_to_detect_respond_recover_and_notify(env):
    inc = open_incident(env, "P1", "down", "health alert", began=T0 - 70 * timedelta(seconds=1), now=T0)
    act(inc, env, T0 + 2 * M, "ack", "ops-lead")
    act(inc, env, T0 + 3 * M, "step", "ops-oncall", step=1)
    act(inc, env, T0 + 20 * M, "step", "cs-oncall", step=7, note="notice on the status page")
    with pytest.raises(IncidentError, match="before the outage began"):
        act(inc, env, T0 + 40 * M, "close", "ops-lead", recovered_at=(T0 - 5 * M).isoformat())
    act(inc, env, T0 + 40 * M, "close", "ops-lead", recovered_at=(T0 + 25 * M).isoformat(), note="region back")
    assert inc.figures() == {"detect_seconds": 70.0, "respond_seconds": 120.0, "recover_seconds": 25 * 60 + 70.0,
                             "notify_seconds": 20 * 60 + 70.0, "respond_within_seconds": 900.0,
                             "responded_in_time": True}
    with pytest.raises(IncidentError, match="closed"):
        act(inc, env, T0 + 41 * M, "ack", "ops-lead")


def test_p2_to_p4_have_their_response_time_and_no_steps(env):
    for level, minutes in (("P2", 60), ("P3", 240), ("P4", 1440)):
        inc = open_incident(env, level, "slow", "a person", now=T0)
        assert inc.steps == [] and inc.due(env.operations.incident) == {"ack": T0 + minutes * M}
    with pytest.raises(IncidentError, match="use one of P1, P2, P3, P4"):
        open_incident(env, "P0", "x", "a person", now=T0)
    with pytest.raises(IncidentError, match="future"):
        open_incident(env, "P1", "x", "a person", began=T0 + M, now=T0)


def test_a_step_owned_by_an_unknown_team_is_a_config_error(tmp_path):
    message = problems_of(spec_with(tmp_path, "operations:\n  incident:\n    p1_steps:\n"
                                              "      - {key: triage, name: t, owner: night shift, within: 5min}\n"))
    assert "operations.incident" in message and "owner 'night shift' is not a team" in message


def test_on_production_an_incident_step_is_taken_only_signed_by_a_member_of_its_owner_team(tmp_path):
    """Incident actions are decisions too: signed over the incident, the action and what it says,
    by the person the action names, who must be in the step's owner team."""
    from flows.incident import IncidentAction, _verified
    from pcdb.decisions import DecisionRefused
    from tests.conftest import Signers, production_spec

    local = load_environment("local")
    signers = Signers([*local.approvers(), *local.team_members(list(local.operations.incident.teams))])
    base = tmp_path / "base.yaml"
    base.write_text(f"extends: local\nname: incidents\nreports_dir: {tmp_path / 'reports'}\n")
    spec = load_environment(production_spec(base, signers))
    inc = open_incident(spec, "P1", "service completely down", "health alert", began=T0 - 2 * M, now=T0)
    inc.run_id = "5a0c0c1e-run"
    action = {"request_id": "r1", "action": "step", "by": "ops-oncall", "step": 1, "note": "primary does not answer"}
    message = inc.decision_request(spec, action).message("ops-oncall")
    made = _verified(spec, inc, IncidentAction(**action, message=message, signature=signers.sign("ops-oncall", message)))
    assert made.signed and made.signer == "ops-oncall" and made.step == "incident-step-1"
    with pytest.raises(DecisionRefused, match="unsigned"):                              # production: never unsigned
        _verified(spec, inc, IncidentAction(**action))
    dba = {**action, "by": "dba-oncall"}
    with pytest.raises(IncidentError, match="owned by ops team"):                      # not in the owner team
        _verified(spec, inc, IncidentAction(**dba, message=inc.decision_request(spec, dba).message("dba-oncall"),
                                            signature=signers.sign("dba-oncall", message)))
    other = {**action, "note": "all fine"}                                             # signed over another note
    with pytest.raises(DecisionRefused, match="signed over another plan"):
        _verified(spec, inc, IncidentAction(**other, message=message, signature=signers.sign("ops-oncall", message)))


def test_one_outage_seen_by_two_rules_in_two_health_runs_opens_one_incident_before_its_run_starts(tmp_path, monkeypatch):
    """The writes-down outage: the first health run sees no writable primary and opens a P1; the
    next one, a moment later, sees the connection failure of the same outage. The worker may not
    have started the first incident's run yet (it takes seconds under load): the record is
    written by the alert itself, with the run that will follow it, so the second alert finds it."""
    import logging
    from types import SimpleNamespace

    from flows import health as health_flow
    from flows import service
    from pcdb.incident import IncidentStore
    from pcdb.private import audit

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"extends: {DEPLOYMENTS / 'local.yaml'}\nname: inc\norchestrator:\n  home: {tmp_path / 'orch'}\n")
    env = load_environment(spec)
    started = []
    monkeypatch.setattr(service, "start_deployment_run",
                        lambda flow, deployment, params: started.append(params) or f"run-{len(started)}")
    monkeypatch.setattr(health_flow, "get_run_logger", lambda: logging.getLogger("test"))

    def health_run(rule):
        report = SimpleNamespace(notified=[{"rule": rule, "transition": "firing", "severity": "critical"}],
                                 alerts=[{"rule": rule, "title": rule}])
        alerts = SimpleNamespace(alert=lambda r: {"pending_since": "2026-12-02T05:00:00+00:00"})
        return health_flow._open_incidents(env, report, alerts)

    assert health_run("no-writable-primary") == ["run-1"]
    [recorded] = IncidentStore(env).open_ones()          # there before the worker starts run-1
    assert recorded.run_id == "run-1" and recorded.severity == "P1" and recorded.began == "2026-12-02T05:00:00+00:00"
    assert started[0]["resume_id"] == recorded.id
    assert health_run("database-connection-failure") == []            # the same outage: no second P1
    assert [i.id for i in IncidentStore(env).open_ones()] == [recorded.id]
    # the records and the store's lock: their owner's only (server status reports anything looser)
    assert audit([(IncidentStore(env).folder, 0o700, 0o600)]) == []
