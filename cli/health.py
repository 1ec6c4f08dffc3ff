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


@health_app.callback()
@user_errors
def health_command(ctx: typer.Context, env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Evaluate every health rule once (what the every-minute deployment does) and notify each
    alert transition once. Exits 0 ok, 1 warning, 2 critical (as monitoring plugins do)."""
    if ctx.invoked_subcommand is not None:
        return
    config = use_orchestrator(load_environment(env))
    from flows.health import health_check

    state = run_flow(lambda: health_check(**spec_args(env), return_state=True), config, env)
    result = flow_result(state, "the health check failed")
    if as_json:
        print(json.dumps({k: result[k] for k in ("status", "checked_at", "metrics", "business", "alerts",
                                                  "silences", "notified")}, indent=2, default=str))
    else:
        out.print(f"status: {result['status']} (checked {result['checked_at']})", highlight=False)
        for a in result["alerts"]:
            out.print(f"{a['state']:9} {a['severity'] or '-':8} {a['rule']}: {a['value']} (threshold {a['threshold']}) "
                      f"since {a['since']} -> {', '.join(a['channels'])}"
                      + (f" [{a['annotation']}]" if a["annotation"] else "")
                      + (f" [silenced until {a['silenced_until']}]" if a["silenced_until"] else ""),
                      highlight=False, markup=False)
        out.print("business: " + ", ".join(f"{k} {v}" for k, v in result["business"].items()), highlight=False)
    raise typer.Exit({"ok": 0, "warning": 1, "critical": 2}[result["status"]])


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
