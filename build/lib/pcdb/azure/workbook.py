"""The §6.3 dashboard (R-MON-7) as an Azure Monitor workbook among the desired resources.

Three sections, as the spec's ``monitoring.dashboard`` names them:

- real-time status: server alive, connections, sessions by state, replica lag (Azure Monitor metrics);
- performance: CPU and memory, IOPS and throughput (metrics), the query-time distribution and the
  top-10 slow queries (Log Analytics: the PostgreSQLLogs lines log_min_duration_statement writes);
- business: the product-change and KOS-integration success rates by day, week and month, activity
  per user and the error trend. The rates are the ones the health runbook computes each minute and
  publishes to Azure Monitor as custom metrics (namespace ``pcdb/business`` on the server,
  AzureTarget.publish_business_metrics); the error trend is ERROR lines of the server log.

The workbook's name is a GUID derived from the server's id, so a re-run finds the same workbook
and the content is serialized with sorted keys, so an unchanged dashboard is no drift.
"""

from __future__ import annotations

import json
import uuid

from pcdb.config import Environment

PG_TYPE = "microsoft.dbforpostgresql/flexibleservers"
BUSINESS_NAMESPACE = "pcdb/business"
_AGGREGATION = {"Sum": 1, "Minimum": 2, "Maximum": 3, "Average": 4, "Count": 7}
_LOGS = 'AzureDiagnostics\n| where ResourceProvider == "MICROSOFT.DBFORPOSTGRESQL" and Category == "PostgreSQLLogs"'


def workbook_name(server_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pcdb-dashboard:{server_id.lower()}"))


def _title(name: str, text: str) -> dict:
    return {"type": 1, "name": name, "content": {"json": text}}


def _metrics(name: str, title: str, resource_id: str, metrics: list[tuple[str, str]], namespace: str = PG_TYPE,
             hours: int = 24, chart: int = 2) -> dict:
    return {"type": 10, "name": name, "content": {
        "version": "MetricsItem/2.0", "title": title, "size": 0, "chartType": chart, "resourceType": PG_TYPE,
        "metricScope": 0, "resourceIds": [resource_id], "timeContext": {"durationMs": hours * 3_600_000},
        "metrics": [{"namespace": namespace, "metric": f"{namespace}--{metric}", "aggregation": _AGGREGATION[agg]}
                    for metric, agg in metrics]}}


def _logs(name: str, title: str, workspace_id: str, query: str, visualization: str, days: int = 1) -> dict:
    return {"type": 3, "name": name, "content": {
        "version": "KqlItem/1.0", "title": title, "query": query, "size": 0, "queryType": 0,
        "resourceType": "microsoft.operationalinsights/workspaces", "crossComponentResources": [workspace_id],
        "timeContext": {"durationMs": days * 86_400_000}, "visualization": visualization}}


def workbook(env: Environment, server_id: str, replica_id: str, workspace_id: str) -> dict:
    """The workbook's content (Notebook/1.0): one item per §6.3 panel."""
    board = env.monitoring.dashboard
    durations = (f"{_LOGS}\n| where Message has \"duration:\"\n"
                 "| extend ms = todouble(extract(@\"duration: ([0-9.]+) ms\", 1, Message))")
    items = [
        _title("status-title", "## Real-time status\n" + ", ".join(board.get("real_time_status", []))),
        _metrics("alive", "server alive (is_db_alive)", server_id, [("is_db_alive", "Minimum")], hours=6),
        _metrics("connections", "connections", server_id, [("active_connections", "Maximum")], hours=6),
        _metrics("sessions", "sessions by state (transactions in progress)", server_id,
                 [("sessions_by_state", "Maximum")], hours=6),
        _metrics("replica-lag", "read replica lag (s)", replica_id,
                 [("physical_replication_delay_in_seconds", "Maximum")], hours=6),
        _title("performance-title", "## Performance\n" + ", ".join(board.get("performance_metrics", []))),
        _metrics("cpu-memory", "CPU and memory (%)", server_id, [("cpu_percent", "Average"), ("memory_percent", "Average")]),
        _metrics("iops", "IOPS and throughput", server_id, [("iops", "Average"), ("disk_iops_consumed_percentage", "Average"),
                                                             ("network_bytes_egress", "Sum")]),
        _logs("query-time", "query time distribution (statements slower than log_min_duration_statement)", workspace_id,
              durations + "\n| summarize p50 = percentile(ms, 50), p90 = percentile(ms, 90), p99 = percentile(ms, 99) "
                          "by bin(TimeGenerated, 15m)", "timechart"),
        _logs("top-slow", "top 10 slow queries", workspace_id,
              durations + "\n| extend statement = extract(@\"statement: (.*)\", 1, Message)"
                          "\n| summarize calls = count(), avg_ms = avg(ms), max_ms = max(ms) by statement"
                          "\n| top 10 by avg_ms desc", "table"),
        _title("business-title", "## Business\n" + ", ".join(board.get("business_metrics", []))),
    ]
    for days, label in ((1, "day"), (7, "week"), (30, "month")):
        items.append(_metrics(f"business-{label}", f"success rates (%), last {label}", server_id,
                              [("product_change_success_rate", "Average"), ("kos_success_rate", "Average")],
                              namespace=BUSINESS_NAMESPACE, hours=24 * days))
    items += [
        _metrics("processing-time", "average processing time (s)", server_id, [("avg_processing_seconds", "Average")],
                 namespace=BUSINESS_NAMESPACE, hours=24 * 7),
        _logs("activity-per-user", "activity per user (connections)", workspace_id,
              f"{_LOGS}\n| where Message has \"connection authorized\"\n"
              "| extend user = extract(@\"user=([^ ,]+)\", 1, Message)\n| summarize connections = count() by user, "
              "bin(TimeGenerated, 1h)", "barchart", days=7),
        _logs("error-trend", "error trend (ERROR and FATAL lines of the server log)", workspace_id,
              f"{_LOGS}\n| where errorLevel_s in (\"ERROR\", \"FATAL\", \"PANIC\")\n"
              "| summarize errors = count() by errorLevel_s, bin(TimeGenerated, 1h)", "timechart", days=7),
    ]
    return {"version": "Notebook/1.0", "items": items, "isLocked": False}


def serialized(content: dict) -> str:
    """Stable text of the content: the same dashboard is the same string (no drift on a re-run)."""
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
