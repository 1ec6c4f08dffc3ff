"""`pcdb health`: the health rules evaluated now, and silences.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

from cli.common import EnvOption, JsonOption, flow_result, health_app, out, run_flow, spec_args, use_orchestrator, user_errors
from pcdb import clock
from pcdb.config import load_environment
from pcdb.errors import PcdbError
from pcdb.units import parse_duration

KEYS = ("status", "checked_at", "metrics", "business", "alerts", "silences", "notified", "serving", "planned_failovers",
        "timeline_moves_held")


@health_app.callback()
@user_errors
def health_command(ctx: typer.Context, env: EnvOption = "local", as_json: JsonOption = False,
                   now: Annotated[bool, typer.Option("--now", help="evaluate now in a run of this command's own, "
                                                     "which records the alert state and notifies each transition "
                                                     "(what the scheduled deployment does)")] = False) -> None:
    """The health of an environment. With the server up and the every-minute deployment running,
    its latest result (read, not run again); with no server, the rules evaluated in this process,
    recording and notifying nothing; otherwise, and with --now, a run that evaluates every rule
    and notifies each alert transition once. The output says which. Exits 0 ok, 1 warning, 2
    critical (as monitoring plugins do)."""
    if ctx.invoked_subcommand is not None:
        return
    spec = load_environment(env)
    config = use_orchestrator(spec)
    answer = None if now else _without_a_run(spec, config)
    if answer is None:
        from flows.health import health_check

        state = run_flow(lambda: health_check(**spec_args(env), return_state=True), config, env)
        answer = flow_result(state, "the health check failed"), {
            "kind": "run", "text": "evaluated now by a run of this command, which recorded and notified"}
    result, source = answer
    if as_json:
        print(json.dumps({**{k: result.get(k) for k in KEYS}, "source": source}, indent=2, default=str))
    else:
        out.print(f"status: {result['status']} (checked {result['checked_at']}: {source['text']})", highlight=False)
        if result.get("serving"):
            out.print(f"SERVING: {result['serving']}", highlight=False, markup=False)
        for p in result.get("planned_failovers") or []:
            out.print(f"planned failover, not an alert: timeline {p['from_timeline']} -> {p['to_timeline']} by "
                      f"{'; '.join(p['by'])}", highlight=False, markup=False)
        for h in result.get("timeline_moves_held") or []:
            out.print(f"timeline {h['from_timeline']} -> {h['to_timeline']} while {h['during']} holds the environment: "
                      f"held until it ends (at most until {h['until']}), then explained by its ledger row or fired",
                      highlight=False, markup=False)
        for a in result["alerts"]:
            out.print(f"{a['state']:9} {a['severity'] or '-':8} {a['rule']}: {a['value']} (threshold {a['threshold']}) "
                      f"since {a['since']} -> {', '.join(a['channels'])}"
                      + (f" [{a['annotation']}]" if a["annotation"] else "")
                      + (f" [silenced until {a['silenced_until']}]" if a["silenced_until"] else ""),
                      highlight=False, markup=False)
        out.print(business_line(result["business"]), highlight=False)
    raise typer.Exit({"ok": 0, "warning": 1, "critical": 2}[result["status"]])


def business_line(business: dict) -> str:
    """The business rates as a person reads them: a rate the window had no request for says so
    (the JSON keeps null)."""
    return "business: " + ", ".join(f"{k} {'no data in the window' if v is None else v}" for k, v in business.items())


def _prefect_api_in_this_process() -> bool:
    """A caller that imported Prefect and pointed it at an API (a test harness, a notebook): its
    settings say so, not the environment. A fresh `pcdb` process has not imported Prefect."""
    import sys

    if "prefect" not in sys.modules:
        return False
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _without_a_run(spec, config) -> tuple[dict, dict] | None:
    """The answer that needs no flow run: the scheduled deployment's latest result while it is
    fresh (the server up, the schedule on), or an evaluation in this process when no Prefect API
    runs at all. None: run the check."""
    import os

    from pcdb import health

    every = spec.monitoring.health.every
    if config is not None:
        if not every:
            return None
        store = health.store_for(spec)
        try:
            latest = store.latest()
        finally:
            store.close()
        if latest is None:
            return None
        at, report = latest
        age = clock.now() - at
        if age > max(2 * every, timedelta(seconds=90)):
            return None                       # the schedule is behind: check now rather than show the past
        return report, {"kind": "scheduled", "at": at.isoformat(timespec="seconds"),
                        "text": f"the scheduled health-{spec.name} run's result, {age.total_seconds():.0f} s ago; "
                                "`pcdb health --now` evaluates again"}
    if os.environ.get("PREFECT_API_URL") or _prefect_api_in_this_process():
        return None                           # an API of the caller's own: run there
    from flows.context import runbook_context

    store = health.store_for(spec)
    try:
        report = health.preview(runbook_context(spec), store)
    finally:
        store.close()
    return report.as_dict(), {"kind": "preview", "text": "evaluated in this process with no server up: nothing was "
                                                         "recorded or notified; `pcdb server up` resumes the "
                                                         "every-minute runs, `pcdb health --now` records and notifies"}


@health_app.command("silence")
@user_errors
def health_silence(env: EnvOption = "local",
                   rule: Annotated[str, typer.Option("--rule", help="a rule name (see `pcdb health --json`), "
                                                     "or * for all")] = "*",
                   duration: Annotated[str, typer.Option("--for", help="how long, e.g. 2h (at most 7d)")] = "1h",
                   reason: Annotated[str, typer.Option("--reason", help="why: kept with the silence")] = "") -> None:
    """Hold back the notifications of a rule until the silence expires (the alert is still
    evaluated and shown, marked silenced)."""
    from pcdb import health

    spec = load_environment(env)
    if not reason.strip():
        raise PcdbError("--reason is required: a silence without a reason is an alert nobody can judge")
    length = parse_duration(duration)
    if not timedelta(0) < length <= timedelta(days=7):
        raise PcdbError(f"--for {duration}: a silence lasts more than 0 and at most 7d")
    names = {r.name for r in health.catalog(spec)}
    if rule != "*" and rule not in names:
        raise PcdbError(f"--rule {rule}: no such rule in {spec.name}; the rules are {', '.join(sorted(names))}")
    now = clock.now()
    store = health.store_for(spec)
    try:
        number = store.silence(rule, now + length, reason.strip(), now)
    finally:
        store.close()
    out.print(f"silence {number}: {rule} on {spec.name} until {(now + length).isoformat(timespec='seconds')} "
              f"({reason.strip()})", highlight=False, markup=False)
