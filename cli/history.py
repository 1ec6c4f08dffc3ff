"""`pcdb history`: the run ledger, and its verification against the anchors.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import EnvOption, JsonOption, err, history_app, json_default, out, use_orchestrator, user_errors
from pcdb import clock
from pcdb.config import load_environment
from pcdb.errors import PcdbError
from pcdb.units import UnitError, parse_duration

SinceOption = Annotated[str, typer.Option("--since", help="how far back, e.g. 30d, 12h")]


def _ledger_context(env: str):
    spec = load_environment(env)
    use_orchestrator(spec)
    from flows.context import runbook_context  # Prefect only if a secret is in a block (Azure)

    return spec, runbook_context(spec)


@history_app.callback()
@user_errors
def history(ctx: typer.Context, env: EnvOption = "local", since: SinceOption = "30d",
            flow: Annotated[str | None, typer.Option("--flow", help="only runs of this flow, e.g. dr-drill")] = None,
            run: Annotated[str | None, typer.Option("--run", help="only this flow run (its id), whenever it ran")] = None,
            as_json: JsonOption = False) -> None:
    """List the runbook runs recorded in the ledger (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        window = parse_duration(since)
    except UnitError as exc:
        raise PcdbError(f"--since {since!r}: {exc}") from None
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    spec, run_ctx = _ledger_context(env)
    with run_ctx.connect() as conn:
        if run is not None:
            row = ledger.row_of_run(conn, LEDGER_SCHEMA, run)
            if row is None:
                raise PcdbError(f"--run {run}: no such run in the ledger of {spec.name} (a run still going, or "
                                "one spooled, is written when it ends: `pcdb history` lists the spooled ones)")
            rows = [row]
        else:
            rows = ledger.rows(conn, LEDGER_SCHEMA, clock.now() - window, flow)
    from pcdb.orchestrator import spool_path

    spool = ledger.Spool(spool_path(spec))
    pending = spool.pending()
    if as_json:
        print(json.dumps({"runs": rows, "spooled": [p.as_json() for p in pending]}, indent=2,
                         default=json_default, ensure_ascii=False))
        return
    table = Table("#", "flow", "state", "triggered by", "ended", "figures", "report", title=f"runs of {spec.name}")
    for r in rows:
        table.add_row(str(r["seq"]), r["flow"], r["state"], r["triggered_by"],
                      r["ended_at"].isoformat(timespec="seconds") if r["ended_at"] else "-",
                      ledger.figures_line(r["figures"]), r["report_path"] or "-")
    out.print(table)
    if pending:
        out.print(f"{len(pending)} run(s) waiting in {spool.path} for the ledger (written by the next run)")


@history_app.command("verify")
@user_errors
def history_verify(env: EnvOption = "local", as_json: JsonOption = False) -> None:
    """Check the ledger: its hash chain, its anchors outside the database, every report against
    its write-once archive, and every signed decision; name the first row that differs."""
    from pcdb import decisions, ledger
    from pcdb.schema import LEDGER_SCHEMA

    spec, run_ctx = _ledger_context(env)
    target = run_ctx.target
    with run_ctx.connect() as conn:
        result = ledger.verify(conn, LEDGER_SCHEMA, target.ledger_anchors(), target.read_archived_report,
                               decisions.recheck)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    elif result.ok:
        anchored = (f", {result.anchors['anchored']} anchored in {result.anchors['where']}" if result.anchors
                    else ", no evidence store to anchor it in")
        out.print(f"the ledger of {spec.name} is intact: {result.rows} row(s), chain verified{anchored}, "
                  f"{result.reports['checked']} archived report(s) and {result.signatures} signature(s) checked",
                  highlight=False, soft_wrap=True)
    if not as_json:
        for warning in result.warnings:
            err.print(f"warning: {escape(warning)}", highlight=False, soft_wrap=True)
    if not result.ok:
        broken = result.first_broken
        at = f" (run {broken['run_id']}, {broken['flow']})" if broken["run_id"] else ""
        more = f"; {len(result.problems) - 1} more problem(s) (--json lists them)" if len(result.problems) > 1 else ""
        raise PcdbError(f"the ledger of {spec.name} is broken at row {broken['seq']}{at}: {broken['reason']}{more}")
