"""Health monitoring on a real sandbox: every rule evaluated from real probes, alert state kept
on the orchestrator's side (so an unreachable primary fires), each transition notified once on
the rule's own channels through real notification blocks to a local HTTP receiver, reminders,
silences, annotations during pcdb's own runs, and the metric history."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb import clock as pcdb_clock
from pcdb import health, schema
from pcdb.config import load_environment
from pcdb.context import RunbookContext
from pcdb.install import run_directly
from tests.conftest import Receiver, SmtpReceiver, new_target

pytestmark = pytest.mark.postgres

RULES = """monitoring:
  system_metrics:
    - {metric: active_connections, operator: ">", value: 12, level: critical}
  health:
    disabled_rules: [transactions-per-second]
    reminder_every: 4h
    alarm_duration: 0s
    extra_rules:
      - {name: too-many-sessions, title: sessions above 3, metric: active_connections, operator: ">", warning: 3,
         duration: 2min, channels: [teams]}
      - {name: kos-log-partitions, title: fewer than 2 future partitions, metric: partitions_ahead, operator: "<",
         critical: 2}
      - {name: role-escalation, title: a role with more than the spec gives, metric: escalated_roles, operator: ">",
         critical: 0}
notifications:
  local_sink: false
  channels:
    teams: {block: custom-webhook/pcdb-health-teams}
    email: {block: email-server-credentials/pcdb-health-mail, recipients: [dba@phonebill.test]}
    sms: {block: custom-webhook/pcdb-health-sms}
"""


class Receivers:
    """Teams and SMS at a real local HTTP receiver, email at a real local SMTP server."""

    def __init__(self):
        from prefect.blocks.notifications import CustomWebhookNotificationBlock
        from prefect_email import EmailServerCredentials, SMTPType

        self.http, self.smtp = Receiver(), SmtpReceiver()
        for channel in ("teams", "sms"):
            CustomWebhookNotificationBlock(name=channel, url=self.http.url, json_data={
                "channel": channel, "subject": "{{subject}}", "text": "{{body}}"}).save(f"pcdb-health-{channel}",
                                                                                         overwrite=True)
        EmailServerCredentials(smtp_server="127.0.0.1", smtp_port=self.smtp.port, smtp_type=SMTPType.INSECURE
                               ).save("pcdb-health-mail", overwrite=True)   # a test receiver on loopback

    @property
    def received(self) -> list[dict]:
        return self.http.received + [{"channel": "email", **m} for m in self.smtp.received]


@pytest.fixture(scope="module")
def receiver(prefect_harness):
    got = Receivers()
    yield got
    got.smtp.stop()


@pytest.fixture(scope="module")
def env():
    target = new_target(RULES, sandbox="  storage_quota: 256MB\n")
    spec = target.env_path
    spec.write_text(spec.read_text().replace("name: test\n", "name: health-t\n", 1))
    target.env = load_environment(spec)
    target.ensure_resource_group()
    target.ensure_server()
    target.ensure_replica()
    target.ensure_database()
    run_directly(RunbookContext(target.env, target), phases=[3, 4, 5, 6])
    yield target
    target.sandbox.destroy()


class Clock:
    """Health runs at chosen moments (the rules' durations are minutes and hours)."""

    def __init__(self, env, receiver, tmp_path):
        self.env, self.receiver = env, receiver
        self.store = health.Store(tmp_path / "health.sqlite")
        self.now = pcdb_clock.now()
        self.first = (len(receiver.http.received), len(receiver.smtp.received))   # this test's, not earlier ones

    def run(self, after: timedelta = timedelta(minutes=1), annotation: str | None = None,
            explains_later: str | None = None) -> health.Report:
        from flows.notify import notify

        self.now += after
        ctx = RunbookContext(self.env.env, self.env)
        return health.run(ctx, self.store, lambda level, subject, body, channels: notify(
            self.env.env, level, subject, body, channels), now=self.now, annotation=annotation,
            explains_later=explains_later)

    def sent(self, rule: str) -> list[dict]:
        mine = self.receiver.http.received[self.first[0]:] + [
            {"channel": "email", **m} for m in self.receiver.smtp.received[self.first[1]:]]
        return [m for m in mine if rule in m["text"]]


def install_row(env, run_id: str, timelines: list[int]) -> None:
    """The ledger row an install writes as it ends, with the timelines its Phase 7 made."""
    from pcdb import ledger

    ended = pcdb_clock.now()
    with RunbookContext(env.env, env).connect() as conn:
        ledger.append(conn, schema.LEDGER_SCHEMA, ledger.RunRecord(
            run_id=run_id, flow="install", environment=env.env.name, state="Completed",
            triggered_by="test", started_at=ended - timedelta(seconds=30), ended_at=ended,
            figures={ledger.PLANNED_FAILOVERS: {"check": "Phase 7's HA failover test", "timelines": timelines}}))


def alert(report: health.Report, rule: str) -> dict | None:
    return next((a for a in report.alerts if a["rule"] == rule), None)


def test_hysteresis_a_value_just_below_the_threshold_does_not_resolve():
    rule = health.Rule("cpu", "cpu", "cpu_percent", ">", 80.0, None, timedelta(minutes=5), None, "sql")
    assert rule.breached(80.5) == "warning" and rule.breached(80.0) is None
    assert not rule.cleared(79.0, "warning", 5) and rule.cleared(75.9, "warning", 5)
    partitions = health.Rule("p", "p", "partitions_ahead", "<", None, 2.0, timedelta(0), None, "sql")
    assert partitions.breached(1) == "critical" and partitions.cleared(2.0, "critical", 5)   # a count: no margin


def test_a_clean_sandbox_is_ok_and_the_json_is_the_contract(env, receiver):
    result = CliRunner().invoke(app, ["health", "--env", str(env.env_path), "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "ok" and report["alerts"] == [] and report["source"]["kind"] == "run"  # this API's
    assert set(report["business"]) == {"product_change_success_rate", "kos_success_rate", "avg_processing_seconds"}
    metrics = report["metrics"]
    assert metrics["up"] == 1 and metrics["connection_failed"] == 0 and metrics["partitions_ahead"] >= 3
    assert metrics["tls_days_left"] > 30 and metrics["xid_age"] > 0 and metrics["active_connections"] >= 1
    assert metrics["replica_lag_seconds"] is not None and metrics["storage_percent"] > 0
    assert set(metrics) <= health.MEASURED                # a rule may name only what a run measures (spec check)
    assert (metrics["writable_primary"], metrics["primary_read_only"], metrics["sync_standby"]) == (1, 0, 1)
    datetime.fromisoformat(report["checked_at"])


def test_with_no_server_pcdb_health_evaluates_in_process_and_records_and_notifies_nothing(env, receiver):
    """No Prefect API at all: the rules are evaluated in the command's own process, from the
    alert state the last run left, and the store is as it was afterwards."""
    import os
    import subprocess
    import sys

    CliRunner().invoke(app, ["health", "--env", str(env.env_path)])          # a run: the state to start from
    store = health.store_for(env.env)
    before = (store.last_run(), store.db.execute("SELECT count(*) FROM notifications").fetchone(), store.alerts())
    store.close()
    alone = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    result = subprocess.run([sys.executable, "-m", "cli", "health", "--env", str(env.env_path), "--json"],
                            capture_output=True, text=True, env=alone, timeout=120, check=False)
    report = json.loads(result.stdout)
    assert report["source"]["kind"] == "preview" and "nothing was recorded or notified" in report["source"]["text"]
    assert result.returncode == {"ok": 0, "warning": 1, "critical": 2}[report["status"]]
    assert report["metrics"]["up"] == 1 and report["notified"] == []
    assert "prefect" not in result.stderr.lower()                              # no server was started for it
    store = health.store_for(env.env)
    try:
        assert (store.last_run(), store.db.execute("SELECT count(*) FROM notifications").fetchone(),
                store.alerts()) == before
    finally:
        store.close()


def test_cpu_memory_and_iops_are_measured_on_the_sandbox_from_proc(env, receiver, tmp_path):
    """R-MON-1's system metrics where Azure Monitor would give them: the primary's processes and its
    disk, measured; a second run turns the counters into percentages."""
    clock = Clock(env, receiver, tmp_path)
    first = clock.run(timedelta(0))
    assert 0 < first.metrics["memory_percent"] < 100 and first.metrics["cpu_percent"] is None   # one reading
    with admin(env) as conn:                                    # some work for the primary to do
        conn.execute("SELECT count(*) FROM generate_series(1, 2000000)")
    second = clock.run(timedelta(seconds=(pcdb_clock.now() - clock.now).total_seconds()))
    assert second.metrics["cpu_percent"] > 0
    assert "iops_percent" in second.metrics     # None where the data is on a tmpfs (no block device counts)
    assert second.metrics["iops_percent"] is None or second.metrics["iops_percent"] >= 0


def test_a_rule_fires_after_its_duration_notifies_once_reminds_and_resolves_once(env, receiver, tmp_path):
    clock = Clock(env, receiver, tmp_path)
    sessions = [psycopg.connect(env.endpoint().conninfo(env.admin, env.admin_password())) for _ in range(4)]
    try:
        first = alert(clock.run(), "too-many-sessions")
        assert first["state"] == "pending" and clock.sent("too-many-sessions") == []
        assert alert(clock.run(), "too-many-sessions")["state"] == "pending"      # 1 min of 2
        firing = clock.run()                                                      # 2 min: fires
        assert alert(firing, "too-many-sessions")["state"] == "firing" and firing.status == "warning"
        sent = clock.sent("too-many-sessions")
        assert len(sent) == 1 and sent[0]["channel"] == "teams" and "FIRING" in sent[0]["subject"]
        clock.run()
        assert len(clock.sent("too-many-sessions")) == 1                          # once, not every minute
        clock.run(after=timedelta(hours=4))
        assert len(clock.sent("too-many-sessions")) == 2 and "REMINDER" in clock.sent("too-many-sessions")[1]["subject"]
    finally:
        pids = [s.info.backend_pid for s in sessions]
        for s in sessions:
            s.close()
    with admin(env) as conn:   # a closed session's backend leaves pg_stat_activity a moment later
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the closed sessions' backends did not end within 30 s"
            time.sleep(0.05)
    resolved = clock.run()
    assert alert(resolved, "too-many-sessions")["state"] == "resolved" and resolved.status == "ok"
    assert "RESOLVED" in clock.sent("too-many-sessions")[-1]["subject"]
    clock.run()
    assert len(clock.sent("too-many-sessions")) == 3 and alert(clock.run(), "too-many-sessions") is None
    history = clock.store.series("active_connections", clock.now - timedelta(days=1))
    assert len(history) == 8 and max(v for _, v in history) >= 4                 # every run's sample kept


def test_an_unreachable_primary_fires_connection_failure_on_teams_and_sms(env, receiver, tmp_path):
    clock = Clock(env, receiver, tmp_path)
    clock.run()
    primary = env.sandbox.primary()
    primary.stop(mode="fast")
    try:
        down = clock.run()
        assert down.metrics["up"] == 0 and alert(down, "database-connection-failure")["state"] == "pending"
        fired = clock.run()                                                       # held for 1 min
        assert alert(fired, "database-connection-failure")["state"] == "firing" and fired.status == "critical"
        assert sorted(m["channel"] for m in clock.sent("database-connection-failure")) == ["sms", "teams"]
    finally:
        primary.start(timeout=60)
    back = clock.run()
    assert alert(back, "database-connection-failure")["state"] == "resolved"
    assert sorted(m["channel"] for m in clock.sent("database-connection-failure")) == ["sms", "sms", "teams", "teams"]


def test_fewer_than_two_future_partitions_is_critical_at_once_and_the_guard_clears_it(env, receiver, tmp_path):
    from pcdb import maintenance

    clock = Clock(env, receiver, tmp_path)
    log = f"product_change.{schema.KOS_LOG}"
    with psycopg.connect(env.endpoint().conninfo(env.admin, env.admin_password()), autocommit=True) as conn:
        future = [p.name for p in maintenance.list_partitions(conn, "product_change")
                  if p.range_from > pcdb_clock.now() + timedelta(days=31)]
        for name in future:                                    # empty months ahead, as four months after install
            conn.execute(f"ALTER TABLE {log} DETACH PARTITION product_change.{name}")
            conn.execute(f"DROP TABLE product_change.{name}")
    report = clock.run()
    assert report.metrics["partitions_ahead"] <= 1
    assert alert(report, "kos-log-partitions")["state"] == "firing" and report.status == "critical"
    assert sorted(m["channel"] for m in clock.sent("kos-log-partitions")) == ["email", "sms", "teams"]  # critical routing
    guard = maintenance.partition_guard(RunbookContext(env.env, env))
    assert guard.passed and guard.details["ahead_months"] >= 3
    assert alert(clock.run(), "kos-log-partitions")["state"] == "resolved"


def test_a_business_probe_of_the_spec_is_what_the_rate_reads_read_only(env, receiver, tmp_path):
    """R-MON-3 from the spec's own SQL (checked at load to be one read-only SELECT): here the rate
    counts every finished change of the window, a definition pcdb's built-in query does not use."""
    probe = ("SELECT 100.0 * count(*) FILTER (WHERE process_status = 'COMPLETED') / nullif(count(*), 0) "
             "FROM product_change.pc_product_change_history WHERE requested_at > $1")
    spec = tmp_path / "probe.yaml"
    spec.write_text(f"extends: {env.env_path}\nmonitoring:\n  business_metrics:\n"
                    "    - {metric: product_change_success_rate, target: '> 95%', warning: '< 90%', critical: '< 80%',\n"
                    f"       measurement: the spec's probe, probe: \"{probe}\"}}\n")
    with admin(env) as conn:
        conn.execute("INSERT INTO product_change.pc_product_change_history (line_number, customer_id, "
                     "current_product_code, target_product_code, process_status) SELECT 'L' || g, 'C', 'A', 'B', "
                     "CASE WHEN g <= 3 THEN 'COMPLETED' ELSE 'REQUESTED' END FROM generate_series(1, 4) g")
        try:
            probed = health.sample(RunbookContext(load_environment(spec), env), health.Store(tmp_path / "h.sqlite"),
                                   pcdb_clock.now())[1]
            built_in = health.sample(RunbookContext(env.env, env), health.Store(tmp_path / "h2.sqlite"),
                                     pcdb_clock.now())[1]
            expected = conn.execute(probe.replace("$1", "now() - interval '1 hour'")).fetchone()[0]
        finally:
            conn.execute("DELETE FROM product_change.pc_product_change_history WHERE customer_id = 'C'")
    assert probed["product_change_success_rate"] == round(float(expected), 3)
    assert probed["product_change_success_rate"] != built_in["product_change_success_rate"]   # REQUESTED counted


def test_a_role_given_more_than_the_spec_is_critical_within_a_run_and_resolves_when_taken_back(env, receiver, tmp_path):
    """The guard on the predefined roles: a membership of pg_execute_server_program (the review's way to
    superuser) or a superuser the spec does not name fires at the next health run, on every channel."""
    clock = Clock(env, receiver, tmp_path)
    assert clock.run().metrics["escalated_roles"] == 0
    with admin(env) as conn:
        conn.execute("GRANT pg_execute_server_program TO product_change_app")
        conn.execute("CREATE ROLE pcdb_health_rogue SUPERUSER")
        try:
            report = clock.run()
            assert report.metrics["escalated_roles"] == 2
            assert alert(report, "role-escalation")["state"] == "firing" and report.status == "critical"
        finally:
            conn.execute("REVOKE pg_execute_server_program FROM product_change_app")
            conn.execute("DROP ROLE pcdb_health_rogue")
    assert alert(clock.run(), "role-escalation")["state"] == "resolved"
    fired_then_resolved(clock, "role-escalation", ["teams", "email", "sms"])


def test_a_silence_holds_notifications_until_it_expires_and_a_drill_annotates(env, receiver, tmp_path):
    clock = Clock(env, receiver, tmp_path)
    clock.store.silence("too-many-sessions", clock.now + timedelta(minutes=30), "load test", clock.now)
    sessions = [psycopg.connect(env.endpoint().conninfo(env.admin, env.admin_password())) for _ in range(4)]
    try:
        clock.run(), clock.run()
        fired = clock.run(annotation="pcdb zone drill run 42")
        shown = alert(fired, "too-many-sessions")
        assert shown["state"] == "firing" and shown["silenced_until"] and shown["annotation"] == "pcdb zone drill run 42"
        assert clock.sent("too-many-sessions") == []                              # silenced: held back
        assert clock.store.notifications()[-1]["outcome"].startswith('{"silenced"')
        clock.run(after=timedelta(hours=4))                                       # silence over: the reminder goes
        assert len(clock.sent("too-many-sessions")) == 1 and "zone drill" in clock.sent("too-many-sessions")[0]["text"]
    finally:
        for s in sessions:
            s.close()


def test_a_failover_fires_the_failover_rule_on_all_three_channels_once(env, receiver, tmp_path):
    clock = Clock(env, receiver, tmp_path)
    clock.run()
    env.failover("planned")
    fired = clock.run()
    assert alert(fired, "failover-event")["state"] == "firing"
    assert sorted(m["channel"] for m in clock.sent("failover-event")) == ["email", "sms", "teams"]
    assert alert(clock.run(), "failover-event")["state"] == "resolved"


def test_a_failover_that_pcdbs_install_made_and_recorded_is_said_not_paged_and_one_more_fires(env, receiver, tmp_path):
    """The install's Phase 7 fails over and back as a test; the every-minute run that sampled the
    timeline before it sees the move only after the install ended (its slot's holder, which would
    annotate the alert, is gone). The ledger row says which timelines the run made: those are not
    paged and open no incident, and the report says what they were. One timeline more than the
    runs recorded is a failover nobody planned: it fires."""

    clock = Clock(env, receiver, tmp_path)
    clock.run(after=timedelta(0))                         # the sample before Phase 7 (now: the ledger row is after it)
    made = [env.failover("planned").timeline for _ in range(2)]   # there and back, as Phase 7 does
    install_row(env, "install-run-7", made)     # the install ends: its row
    said = clock.run()
    assert alert(said, "failover-event") is None and clock.sent("failover-event") == []
    (planned,) = said.planned_failovers
    assert planned["to_timeline"] == made[-1] and planned["from_timeline"] == made[0] - 1
    assert planned["by"][0].startswith("pcdb install run install-run-7 (Phase 7's HA failover test, ended ")
    assert clock.store.latest()[1]["planned_failovers"] == [planned]      # what `pcdb health` shows from the schedule
    env.failover("planned")                               # nobody recorded this one
    fired = clock.run()
    assert alert(fired, "failover-event")["state"] == "firing" and fired.planned_failovers == []
    assert sorted(m["channel"] for m in clock.sent("failover-event")) == ["email", "sms", "teams"]


def test_a_failover_seen_while_the_install_still_runs_is_held_until_it_ends_then_explained_or_fired(
        env, receiver, tmp_path):
    """Between Phase 7's failover test and the install's end (the handover, then its ledger row) a
    health run sees the move with no row to explain it yet. While the install holds the
    environment the move is held: nothing sent, and the runs after it compare with the timeline
    before the move. Once the install has ended its row explains the move; a move that no row
    explains fires, and so does one held past HOLD_MOVE_AT_MOST."""

    clock = Clock(env, receiver, tmp_path)
    clock.run(after=timedelta(0))                         # the sample before Phase 7
    made = [env.failover("planned").timeline for _ in range(2)]
    installing = health.explains_later({"what": "install", "run_id": "install-run-10"})
    assert installing == "pcdb install run install-run-10"
    assert health.explains_later({"what": "zone drill", "run_id": "d"}) is None     # a drill's alerts fire
    for _ in range(2):                                    # every run while the install holds the environment
        held = clock.run(explains_later=installing)
        assert alert(held, "failover-event") is None and held.metrics["failover_event"] == 0
        assert [(h["from_timeline"], h["to_timeline"], h["during"]) for h in held.timeline_moves_held] == [
            (made[0] - 1, made[1], installing)]
    assert clock.sent("failover-event") == []
    install_row(env, "install-run-10", made)     # the install ends: its row
    said = clock.run()
    assert alert(said, "failover-event") is None and said.timeline_moves_held == []
    assert [(p["from_timeline"], p["to_timeline"]) for p in said.planned_failovers] == [(made[0] - 1, made[1])]
    assert clock.sent("failover-event") == []

    env.failover("planned")                               # an install killed before its row: nothing explains it
    assert clock.run(explains_later=installing).timeline_moves_held
    fired = clock.run()
    assert alert(fired, "failover-event")["state"] == "firing" and fired.timeline_moves_held == []
    assert sorted(m["channel"] for m in clock.sent("failover-event")) == ["email", "sms", "teams"]
    assert alert(clock.run(), "failover-event")["state"] == "resolved"

    env.failover("planned")                               # a holder that outlasts the hold
    late = clock.run(after=health.HOLD_MOVE_AT_MOST + timedelta(minutes=1), explains_later=installing)
    assert alert(late, "failover-event")["state"] == "firing" and late.timeline_moves_held == []


def test_pcdb_health_says_a_planned_failover_in_its_lines_and_its_json_not_as_an_alert(env, receiver):
    """The same through `pcdb health` (a run of the health flow, its store the orchestrator's):
    a line that says it, the JSON's planned_failovers, the exit status of a healthy sandbox."""

    def install_fails_over_and_back(run_id: str) -> list[int]:
        made = [env.failover("planned").timeline for _ in range(2)]
        install_row(env, run_id, made)     # the install ends: its row
        return made

    CliRunner().invoke(app, ["health", "--env", str(env.env_path)])          # the sample before the failovers
    made = install_fails_over_and_back("install-run-8")
    result = CliRunner().invoke(app, ["health", "--env", str(env.env_path)])
    said = " ".join(result.stdout.split())                                    # the console wraps at its width
    assert result.exit_code == 0, result.stdout
    assert (f"planned failover, not an alert: timeline {made[0] - 1} -> {made[1]} by pcdb install run install-run-8 "
            "(Phase 7's HA failover test, ended ") in said, result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("firing") and "failover-event" in line]
    made = install_fails_over_and_back("install-run-9")
    result = CliRunner().invoke(app, ["health", "--env", str(env.env_path), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["status"] == "ok", result.stdout
    assert [(p["from_timeline"], p["to_timeline"]) for p in report["planned_failovers"]] == [(made[0] - 1, made[1])]
    assert None in report["business"].values()        # this sandbox serves no application: nothing to rate
    assert "None" not in said and all(f"{k} no data in the window" in said for k, v in report["business"].items()
                                      if v is None), said
    assert report["metrics"]["failover_event"] == 0 and report["alerts"] == []
    words = CliRunner().invoke(app, ["health", "--env", str(env.env_path)]).stdout   # the next run: nothing moved
    assert "planned failover" not in words and "failover-event" not in words, words

    from flows.exclusion import mutating_slot

    before = made[1]
    with mutating_slot(env.env.name, "install"):          # the next install, still running after its Phase 7
        made = [env.failover("planned").timeline for _ in range(2)]
        result = CliRunner().invoke(app, ["health", "--env", str(env.env_path), "--json"])
        report = json.loads(result.stdout)
        assert result.exit_code == 0 and report["alerts"] == [], result.stdout
        assert [(h["from_timeline"], h["to_timeline"], h["during"]) for h in report["timeline_moves_held"]] == [
            (before, made[1], "pcdb install run -")]
        words = " ".join(CliRunner().invoke(app, ["health", "--env", str(env.env_path)]).stdout.split())
        assert (f"timeline {before} -> {made[1]} while pcdb install run - holds the environment: held until it "
                "ends (at most until ") in words, words
        install_row(env, "install-run-11", made)     # the install ends: its row
    report = json.loads(CliRunner().invoke(app, ["health", "--env", str(env.env_path), "--json"]).stdout)
    assert report["timeline_moves_held"] == [] and report["alerts"] == [], report
    assert [(p["from_timeline"], p["to_timeline"]) for p in report["planned_failovers"]] == [(before, made[1])]


def test_silence_cli_refuses_an_unknown_rule_and_a_silence_without_reason(env):
    bad = CliRunner().invoke(app, ["health", "silence", "--env", str(env.env_path), "--rule", "cpu", "--for", "1h",
                                   "--reason", "x"])
    assert bad.exit_code == 1 and "no such rule" in bad.stderr and "high-cpu" in bad.stderr
    bare = CliRunner().invoke(app, ["health", "silence", "--env", str(env.env_path), "--rule", "high-cpu"])
    assert bare.exit_code == 1 and "--reason is required" in bare.stderr
    ok = CliRunner().invoke(app, ["health", "silence", "--env", str(env.env_path), "--rule", "high-cpu", "--for", "2h",
                                  "--reason", "planned load test"])
    assert ok.exit_code == 0 and "high-cpu on health-t until" in ok.stdout


def test_deployed_every_minute_with_a_dead_mans_switch(env, receiver, tmp_path):
    from flows import service

    spec = load_environment(env.env_path)
    health_deployment = next(d for d in service.deployment_definitions(spec, str(env.env_path), tmp_path)
                             if d["name"] == "health-health-t")
    assert health_deployment["schedules"] == [{"cron": "* * * * *", "timezone": "Asia/Seoul"}]
    assert health_deployment["entrypoint"] == "flows.health:health_check"
    automations, missing = service.desired_automations(spec)
    switch = next(a for a in automations if a.name == "pcdb-health-t: no health report")
    assert missing == [] and switch.trigger.within == timedelta(minutes=5)
    related = [r.root for r in switch.trigger.match_related]
    assert switch.trigger.posture.value == "Proactive"
    assert {"prefect.resource.role": "flow", "prefect.resource.name": "health"} in related
    assert len(switch.actions) == 3                                   # the critical routing: teams, email, sms


def admin(env):
    return psycopg.connect(env.endpoint().conninfo(env.admin, env.admin_password()), autocommit=True)


def fired_then_resolved(clock, rule: str, channels: list[str]) -> None:
    """Told once on exactly its channels when it fired, once more when it resolved."""
    sent = clock.sent(rule)
    assert sorted(m["channel"] for m in sent) == sorted(channels * 2), sent
    assert sum("FIRING" in m["subject"] for m in sent) == len(channels)
    assert sum("RESOLVED" in m["subject"] for m in sent) == len(channels)


def test_a_stopped_replica_falls_behind_fires_replica_lag_on_teams_and_email_and_resolves(env, receiver, tmp_path):
    import time

    clock = Clock(env, receiver, tmp_path)
    assert clock.run().metrics["replica_lag_seconds"] is not None          # streaming: seen
    replica = env.sandbox.node("replica")
    replica.stop(mode="fast")
    try:
        assert alert(clock.run(after=timedelta(minutes=6)), "replica-lag-exceeded")["state"] == "pending"
        assert alert(clock.run(after=timedelta(minutes=2)), "replica-lag-exceeded")["state"] == "firing"
    finally:
        replica.start(timeout=60)
    deadline = time.monotonic() + 60
    while alert(clock.run(), "replica-lag-exceeded")["state"] != "resolved":   # streaming again, caught up
        assert time.monotonic() < deadline, "the replica never streamed again"
        time.sleep(0.5)
    fired_then_resolved(clock, "replica-lag-exceeded", ["teams", "email"])


def test_failing_product_changes_are_business_critical_on_every_channel(env, receiver, tmp_path):
    clock = Clock(env, receiver, tmp_path)
    history = "product_change.pc_product_change_history"
    insert = (f"INSERT INTO {history} (line_number, customer_id, current_product_code, target_product_code, "
              "process_status, requested_at, completed_at) SELECT '010-' || g, 'C' || g, 'LTE-59', '5G-89', %s, "
              "now() - interval '10 minutes', now() - interval '9 minutes' FROM generate_series(1, %s) g")
    with admin(env) as conn:
        conn.execute(insert, ("FAILED", 10))
        failing = clock.run()
        assert failing.business["product_change_success_rate"] == 0.0
        shown = alert(failing, "product-change-success-rate")
        assert shown["state"] == "firing" and shown["severity"] == "critical" and failing.status == "critical"
        conn.execute(insert, ("COMPLETED", 200))
        healthy = clock.run()
        assert healthy.business["product_change_success_rate"] > 95
        assert healthy.business["avg_processing_seconds"] == pytest.approx(60, abs=1)
        assert alert(healthy, "product-change-success-rate")["state"] == "resolved"
        conn.execute(f"DELETE FROM {history}")
    fired_then_resolved(clock, "product-change-success-rate", ["teams", "email", "sms"])


def test_a_deadlock_fires_the_deadlock_rate_once_and_it_resolves(env, receiver, tmp_path):
    import threading

    clock = Clock(env, receiver, tmp_path)
    clock.run()
    with admin(env) as conn:
        conn.execute("CREATE TABLE public.deadlock_probe (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO public.deadlock_probe VALUES (1, 0), (2, 0)")
    first, second = admin(env), admin(env)
    first.autocommit = second.autocommit = False
    errors = []
    try:
        first.execute("UPDATE public.deadlock_probe SET v = 1 WHERE id = 1")
        second.execute("UPDATE public.deadlock_probe SET v = 1 WHERE id = 2")
        crossing = threading.Thread(target=lambda: _update(first, 2, errors))
        crossing.start()
        _update(second, 1, errors)
        crossing.join(timeout=30)
        assert [type(e).__name__ for e in errors] == ["DeadlockDetected"]      # PostgreSQL broke one of them
    finally:
        first.rollback(), second.rollback(), first.close(), second.close()
        with admin(env) as conn:
            conn.execute("DROP TABLE public.deadlock_probe")
    fired = clock.run()
    assert fired.metrics["deadlocks_per_hour"] == pytest.approx(60, rel=0.01)     # one in a minute
    assert alert(fired, "deadlock-rate")["state"] == "firing"
    assert alert(clock.run(), "deadlock-rate")["state"] == "resolved"
    fired_then_resolved(clock, "deadlock-rate", ["teams", "email"])            # the routing of a warning


def _update(conn, row: int, errors: list) -> None:
    try:
        conn.execute("UPDATE public.deadlock_probe SET v = 2 WHERE id = %s", (row,))
    except psycopg.errors.DeadlockDetected as exc:
        errors.append(exc)


def test_connections_near_exhaustion_fire_critical_and_resolve_when_they_close(env, receiver, tmp_path):
    clock = Clock(env, receiver, tmp_path)
    crowd = [admin(env) for _ in range(13)]
    try:
        crowded = clock.run()
        assert crowded.metrics["active_connections"] > 12
        assert alert(crowded, "active-connections")["state"] == "firing"
    finally:
        for c in crowd:
            c.close()
    assert alert(clock.run(), "active-connections")["state"] == "resolved"
    fired_then_resolved(clock, "active-connections", ["teams", "email", "sms"])


def test_storage_filled_toward_the_quota_fires_after_ten_minutes_on_teams_and_email(env, receiver, tmp_path):
    clock = Clock(env, receiver, tmp_path)
    quota = 256 * 2**20
    with admin(env) as conn:
        used = conn.execute("SELECT sum(pg_database_size(datname)) FROM pg_database").fetchone()[0]
        rows = int((0.82 * quota - int(used)) / 1100)
        conn.execute("CREATE TABLE public.filler AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, %s) g",
                     (rows,))
        try:
            filled = clock.run()
            assert filled.metrics["storage_percent"] > 75
            assert alert(filled, "high-storage")["state"] == "pending"                 # 10 min in §6.2.2
            assert alert(clock.run(after=timedelta(minutes=10)), "high-storage")["state"] == "firing"
        finally:
            conn.execute("DROP TABLE public.filler")
    assert alert(clock.run(), "high-storage")["state"] == "resolved"
    fired_then_resolved(clock, "high-storage", ["teams", "email"])


def test_the_daily_checklist_checks_each_item_from_data_and_fails_on_what_it_finds(env, receiver):
    for _ in range(2):          # the health runs' history: the day's cache hit, not the cluster's lifetime
        CliRunner().invoke(app, ["health", "--env", str(env.env_path)])
    first = CliRunner().invoke(app, ["checklist", "--env", str(env.env_path), "--json"])
    clean = json.loads(first.stdout)
    results = {i["name"]: i["result"] for i in clean["items"]}
    assert list(results) == ["primary and standby", "replica lag < 1 min", "slow-query log", "wait events",
                             "connection use", "cache hit", "failed logins", "privilege changes", "unusual access"]
    assert first.exit_code == 0 and set(results.values()) == {"pass"}, clean["items"]

    by_hand = env.endpoint().conninfo(env.admin, env.admin_password(), application_name="psql")   # not pcdb
    with psycopg.connect(by_hand, autocommit=True) as conn:
        conn.execute("CREATE ROLE visitor LOGIN PASSWORD 'Visitor-Only-For-This-Test-1'")
        conn.execute("GRANT TRUNCATE ON product_change.pc_circuit_breaker_state TO product_change_readonly")
    try:
        for _ in range(6):                                           # more than max_failed_attempts
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(env.endpoint().conninfo("product_change_app", "wrong-password")).close()
        with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):   # authenticated, then refused
            psycopg.connect(env.endpoint().conninfo("visitor", "Visitor-Only-For-This-Test-1")).close()
        second = CliRunner().invoke(app, ["checklist", "--env", str(env.env_path), "--json"])
        found = {i["name"]: i for i in json.loads(second.stdout)["items"]}
        assert second.exit_code == 2
        assert found["failed logins"]["result"] == "fail" and "6 failed" in found["failed logins"]["evidence"], found
        assert found["privilege changes"]["result"] == "fail" and "GRANT" in found["privilege changes"]["evidence"]
        assert found["unusual access"]["result"] == "fail" and "visitor" in found["unusual access"]["evidence"]
        report = Path(json.loads(second.stdout)["report"]).read_text()
        assert "| failed logins | FAIL |" in report
    finally:
        with admin(env) as conn:
            conn.execute("REVOKE TRUNCATE ON product_change.pc_circuit_breaker_state FROM product_change_readonly")
            conn.execute("DROP ROLE visitor")


def test_a_read_only_primary_is_critical_at_once_on_every_critical_channel_and_health_exits_2(env, receiver):
    """The alert matches the outage: the application cannot write, so it is critical in the first
    run that sees it (no duration), routed as critical (teams, email, sms), and `pcdb health` exits 2."""
    before = (len(receiver.http.received), len(receiver.smtp.received))
    with admin(env) as conn:              # what the storage guard does at 95 %, as Azure does
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
    try:
        result = CliRunner().invoke(app, ["health", "--env", str(env.env_path), "--json"])
        assert result.exit_code == 2, result.output
        report = json.loads(result.stdout)
        (found,) = [a for a in report["alerts"] if a["rule"] == "read-only-primary"]
        assert found["state"] == "firing" and found["severity"] == "critical" and report["status"] == "critical"
        assert not any(a["rule"] == "no-writable-primary" for a in report["alerts"])   # it answers, read-only
        deadline = time.monotonic() + 30

        def told() -> set[str]:
            new = receiver.http.received[before[0]:] + [{"channel": "email", **m} for m in receiver.smtp.received[before[1]:]]
            return {m["channel"] for m in new if "read-only" in m["text"]}
        while told() != {"teams", "email", "sms"}:
            assert time.monotonic() < deadline, told()
            time.sleep(0.1)
    finally:
        with admin(env) as conn:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_reload_conf()")
        CliRunner().invoke(app, ["health", "--env", str(env.env_path), "--json"])    # resolves it for the next tests


def test_a_major_leaving_azures_standard_support_warns_90_days_ahead_and_is_critical_after(env, receiver, tmp_path):
    """The running server's major against pcdb's version table (pcdb/data/postgresql-versions.json),
    at moments chosen around its end of standard support."""
    from pcdb import versions
    from pcdb.config.monitoring import _best_monitor_rules

    with admin(env) as conn:
        major = versions.major_of(conn.info.server_version)
    end = versions.table()[major].azure_standard_end
    spec, settings = env.env, env.env.monitoring.health            # this module's rules replace the defaults:
    rule = next(r for r in _best_monitor_rules() if r.name == "version-support")   # add the default one back
    env.env = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"health": settings.model_copy(
        update={"extra_rules": [*settings.extra_rules, rule]})})})
    try:
        clock = Clock(env, receiver, tmp_path)
        clock.now = datetime(end.year, end.month, end.day, 12, tzinfo=pcdb_clock.now().tzinfo) - timedelta(days=120)
        assert alert(clock.run(timedelta(0)), "version-support") is None              # 120 days ahead: quiet
        warned = clock.run(timedelta(days=40))                                           # 80 days ahead
        assert warned.metrics["version_support_days_left"] == 80
        assert (alert(warned, "version-support")["state"], alert(warned, "version-support")["severity"]) == \
            ("firing", "warning")
        ended = clock.run(timedelta(days=81))                                            # the day after the end
        assert ended.metrics["version_support_days_left"] == -1
        assert alert(ended, "version-support")["severity"] == "critical"
        told = clock.sent("version-support")
        assert [m["subject"].split("[")[1].split("]")[0] for m in told if m["channel"] == "teams"] == ["warning", "critical"]
        assert all("docs/operations/upgrade.md" in m["subject"] + m["text"] for m in told), told
    finally:
        env.env = spec
