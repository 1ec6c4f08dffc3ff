"""Tasks of the DR drills. No retries: a drill step that failed must be looked at, not repeated."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pcdb import drills
from pcdb.context import RunbookContext


@task(name="clean up after earlier drills", cache_policy=NO_CACHE, timeout_seconds=1800)
def cleanup(ctx: RunbookContext, confirm=None) -> list[str]:
    done = drills.cleanup(ctx.target, ctx.env, ctx.admin_password(), confirm)
    for item in done:
        get_run_logger().warning("left over by an earlier drill: %s", item)
    return done


@task(name="drill", task_run_name="{scenario} drill", cache_policy=NO_CACHE, timeout_seconds=4 * 3600)
def run_drill(scenario: str, ctx: RunbookContext, mode: str, decide, confirm, stall: bool) -> drills.DrillResult:
    """Run one scenario and log its measured RTO and RPO."""
    password = ctx.admin_password()
    if scenario == "zone":
        result = drills.zone_drill(ctx.target, ctx.env, password, mode)
    elif scenario == "corruption":
        result = drills.corruption_drill(ctx.target, ctx.env, password)
    else:
        result = drills.region_drill(ctx.target, ctx.env, password, decide, confirm, stall,
                                     drill_id=str(flow_run.get_id() or "drill"))
    get_run_logger().info("%s drill: RTO %s s (target %s), %s acknowledged rows lost, %s in doubt, met=%s",
                          scenario, result.rto_seconds, result.target_rto_seconds, result.rpo_rows_lost,
                          result.rows_in_doubt, result.met)
    return result
