"""Health monitoring (§6, R-MON-1..5), deployed every minute; `pcdb health` runs it by hand.

Read only on the database; the alert state, history and silences are the orchestrator's
(pcdb/health.py). Not recorded in the run ledger: a run a minute is monitoring, not a runbook
of record; the alert transitions it notifies are kept in the health store instead. A run that
finds pcdb's own drill or maintenance holding the environment annotates its alerts with it.
"""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.exclusion import holder
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import flow, runbook_context
from pcdb import health
from pcdb.config import WRITES_DOWN, load_environment
from tasks.steps import task_steps


@flow(name="health", log_prints=False)
@alive
def health_check(env: str = "local", spec_path: str | None = None) -> dict:
    """Evaluate every health rule of an environment once; notify each alert transition once.

    Args:
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
    """
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    record = _holder(spec.name)
    annotation = f"pcdb {record.get('what')} run {record.get('run_id') or '-'}" if record else None
    store = health.store_for(spec)
    step = task_steps()    # each a task run; no "steps" artifact: a run a minute is monitoring, not a runbook
    try:
        report = step("sample the metrics, evaluate the rules, notify what changed", lambda: health.run(
            ctx, store, lambda level, subject, body, channels: notify(spec, level, subject, body, channels),
            annotation=annotation, explains_later=health.explains_later(record)))
        opened = step("open an incident for each critical alert that fires",
                      lambda: _open_incidents(spec, report, store))
    finally:
        store.close()
    result = report.as_dict()
    result["incidents_opened"] = opened
    if report.alerts or report.notified or report.planned_failovers or report.timeline_moves_held:
        create_markdown_artifact(_markdown(spec.name, result), key=f"health-{spec.name}",
                                 description=f"health of {spec.name}: {report.status}")
    get_run_logger().info("health of %s: %s, %d alert(s)", spec.name, report.status, len(report.alerts))
    return result


def _open_incidents(spec, report: health.Report, alerts: health.Store) -> list[str]:
    """A critical alert that starts firing opens an incident by itself (§8.2): writes down (no
    connection for its duration, no writable primary, a read-only primary) is a P1, any other
    critical alert a P2 (the mapping is operations.incident.auto_open). One incident per rule
    while it is open, and one for the rules of the writes-down outage together.

    The record is written here, under the store's lock, with the run that will follow it: the
    next health run (a minute later, or a person's a second later) sees the incident
    at once, even while the worker is still starting that run. Without the persistent server the
    incident is recorded and the failure to start its run is logged (`pcdb incident step` takes
    it over)."""
    from flows import service
    from pcdb.incident import IncidentStore, open_incident

    log = get_run_logger()
    firing = [n for n in report.notified if n["transition"] == "firing" and n["severity"] == "critical"]
    if not firing:
        return []
    store, opened = IncidentStore(spec), []
    with store.opening():
        taken = {i.source_rule for i in store.open_ones()}
        if taken & set(WRITES_DOWN):      # one outage (writes down) is one incident, whichever rule saw it first
            taken |= set(WRITES_DOWN)
        for alert in firing:
            rule = alert["rule"]
            if rule in taken:
                continue
            shown = next((a for a in report.alerts if a["rule"] == rule), {})
            severity = spec.operations.incident.auto_open.get(rule, "P2")
            # the outage began when the rule first saw it (it then held for the rule's duration)
            pending = (alerts.alert(rule) or {}).get("pending_since")
            inc = open_incident(spec, severity, f"{shown.get('title') or rule}: critical on {spec.name}",
                                f"health alert {rule}", datetime.fromisoformat(pending) if pending else None, rule)
            taken |= set(WRITES_DOWN) if rule in WRITES_DOWN else {rule}
            try:
                inc.run_id = service.start_deployment_run("incident", f"incident-{spec.name}", {
                    "severity": severity, "summary": inc.summary, "resume_id": inc.id})
            except Exception as exc:  # noqa: BLE001 - the alert itself was notified: say why no run follows it
                inc.run_id = ""
                log.error("critical alert %s: incident %s recorded, but no run follows it (%s); "
                          "`pcdb incident step --id %s` starts one", rule, inc.id, exc, inc.id)
            store.save(inc)       # before the worker starts the run, which reads it
            if inc.run_id:
                log.warning("critical alert %s: %s incident %s opened (run %s)", rule, severity, inc.id, inc.run_id)
                opened.append(inc.run_id)
    return opened


def _holder(env: str) -> dict | None:
    try:
        return holder(env)
    except Exception:  # noqa: BLE001 - no Prefect variable store: nothing to annotate with
        return None


def _markdown(name: str, r: dict) -> str:
    lines = [f"# Health of `{name}`: {r['status']}", "", f"- Checked at {r['checked_at']}",
             *([f"- **SERVING: {r['serving']}**"] if r.get("serving") else []),
             *[f"- Planned failover, not an alert: timeline {p['from_timeline']} → {p['to_timeline']} by "
               f"{'; '.join(p['by'])}" for p in r.get("planned_failovers") or []],
             *[f"- Timeline {h['from_timeline']} → {h['to_timeline']} while {h['during']} holds the environment: "
               f"held until it ends (at most until {h['until']}); its ledger row says whether it made the move, "
               "or the failover alert fires" for h in r.get("timeline_moves_held") or []], "",
             "| rule | severity | state | value | threshold | since | channels |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {a['rule']} | {a['severity']} | {a['state']} | {a['value']} | {a['threshold']} | {a['since']} | "
              f"{', '.join(a['channels'])} |" for a in r["alerts"]]
    return "\n".join(lines) + "\n"
