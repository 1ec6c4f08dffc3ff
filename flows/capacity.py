"""The weekly capacity analysis (§8.1.2, §8.3.1), deployed Monday 08:00 business time;
`pcdb capacity` runs it by hand.

Read only on the database: one SQL snapshot per run. The snapshots and every forecast are kept
in the orchestrator's home (pcdb/capacity.py), so later runs break growth down by table and
score the forecasts that came due. The report leads with the verdict; its plots are saved beside
it and embedded in the run's artifact; the notification carries a text sparkline.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.runtime import flow_run

from flows.evidence import HOOKS, evidence, ledger_link, publish_report, report_path
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import flow, name_run, runbook_context
from pcdb import capacity, clock
from pcdb.config import load_environment
from tasks.capacity import history, snapshot


@flow(name="capacity", **HOOKS)
@alive
def capacity_analysis(env: str = "local", spec_path: str | None = None, weeks: int | None = None) -> dict:
    """Forecast every capacity limit of an environment; report with plots, ledger, notification.

    Args:
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
        weeks: how many weeks of history the analysis reads (default: the spec's operations.capacity.weeks)
    """
    spec = load_environment(spec_path or env)
    cfg, _ = capacity.settings_of(spec)
    weeks = weeks or cfg.weeks
    ctx = runbook_context(spec)
    logger = get_run_logger()
    with evidence(spec, ctx, "capacity") as ev:
        now = clock.now()
        store = capacity.store_for(spec)
        try:
            taken = snapshot(ctx, store, now)
            points, source = history(ctx, now, weeks)
            quota = spec.sandbox.storage_quota if spec.target == "sandbox" and spec.sandbox else None
            result = capacity.analyse(spec, points, store, now, weeks=weeks, quota_bytes=quota)
        finally:
            store.close()
        result["history_source"] = source
        path = report_path(spec, f"capacity-{spec.name}")
        pictures = capacity.plots(result, points, path.parent, path.stem)
        result["plots"] = [str(p) for p in pictures]
        names = {p.stem.rsplit("-", 1)[1]: p for p in pictures}
        text = capacity.markdown(result, {n: p.name for n, p in names.items()})
        artifact = capacity.markdown(result, {n: capacity.data_url(p) for n, p in names.items()})
        publish_report(spec, f"capacity-{spec.name}", text, "capacity analysis", path=path,
                       artifact_text=artifact + f"\n- Prefect flow run: `{flow_run.get_id()}`\n{ledger_link(spec)}\n")
        result["report"] = str(path)
        ev.report = str(path)
        s = result["storage"]
        ev.figures = {"verdict": result["verdict"], "used_bytes": s["used_bytes"], "limit_bytes": s["limit_bytes"],
                      "growth_bytes_per_day": s["growth_bytes_per_day"], "days_to_warning": s["days_to_warning"],
                      "days_to_autogrow": s["days_to_autogrow"], "days_to_readonly": s["days_to_readonly"],
                      "sku": result["sku"]["recommendation"], "relations": taken["relations"]}
        if "forecast_accuracy" in result:
            ev.figures["forecast_mape_percent"] = {m: a["mape_percent"] for m, a in result["forecast_accuracy"].items()}
        nearest = capacity.nearest_limit_days(result)
        level = "warning" if (nearest is not None and nearest < cfg.alert_within_days) \
            or result["sku"]["recommendation"] == "scale up" else "info"
        spark = capacity.weekly_sparkline(points, result)
        notify(spec, level, f"pcdb capacity of {spec.name}: {result['verdict']}",
               f"{result['verdict']}\nStorage by week: {spark}\nSKU: {result['sku']['recommendation']}"
               f"{' to ' + result['sku']['to'] if result['sku']['to'] else ''} ({result['sku']['reason']})\n"
               f"Report: {path}")
        result["sparkline"] = spark
        logger.info("capacity of %s: %s", spec.name, result["verdict"])
        name_run(f"capacity · {result['verdict']}")
        return result
