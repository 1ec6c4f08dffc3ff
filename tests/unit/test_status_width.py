"""`pcdb server status` stays readable at 80 columns: a deployment's name is folded, never cut
("backup-verification-lo…" told a newcomer nothing)."""

from __future__ import annotations

import io

from rich.console import Console

from cli.server import deployments_table
from pcdb.runbooks import RUNBOOKS


def test_every_deployment_name_is_whole_at_80_columns():
    names = [f"{d.name}-production-eu" for r in RUNBOOKS for d in r.deployments]
    rows = [{"name": n, "schedule": "cron 30 4 * * * (Asia/Seoul)", "next_runs": ["2026-12-03 04:30:00+09:00"]}
            for n in names]
    buffer = io.StringIO()
    Console(file=buffer, width=80, color_system=None).print(deployments_table(rows))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in buffer.getvalue()
    first_column = "".join(line.split("│")[1].strip() for line in lines if line.count("│") >= 4)
    for name in names:
        assert name in first_column, name
