"""A server of its own per test: a newcomer's first `pcdb server up` on local.yaml, and the
PostgreSQL backend. Apart from tests/service/test_service.py (one shared server) so that the two
modules run side by side on the test workers."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from tests.conftest import new_sandbox_root
from tests.service.conftest import Service, wait_until

pytestmark = pytest.mark.postgres


def test_a_first_server_up_has_no_conflict_and_an_alert_lands_in_the_local_sink():
    """local.yaml as a newcomer gets it: `pcdb server up` starts the local notification sink and
    points the channels' blocks at it, so nothing is left to resolve; an outage's critical alert
    then arrives there, on every critical channel, and `server status` names the file."""
    folder = new_sandbox_root()
    first = Service(folder, name="first")                      # local.yaml's channels, untouched
    try:
        up = first.json("server", "up", "--env", str(first.spec))
        assert [c for c in up if c["action"] == "conflict"] == [], up
        assert {c["name"] for c in up if c["resource"] == "notification_block"} == {
            "custom-webhook/pcdb-local-teams", "custom-webhook/pcdb-local-email", "custom-webhook/pcdb-local-sms"}
        status = first.json("server", "status", "--env", str(first.spec))
        log = Path(status["notification_sink"]["log"])
        assert status["notification_sink"]["running"] and log == first.home / "notifications.log"
        first.pcdb("sandbox", "up", "--env", str(first.spec))
        first.pcdb("sandbox", "region", "down", "--env", str(first.spec))   # no writable primary: critical at once
        health = first.pcdb("health", "--env", str(first.spec), "--json", "--now", check=False)   # a run, now
        assert health.returncode == 2, health.stderr[-2000:]

        def told() -> set[str]:
            """The channels of the sink's entries (a dated header line, the body indented) about it."""
            entries = re.split(r"\n(?=\d{4}-)", log.read_text()) if log.exists() else []
            return {entry.split("[", 1)[1].split("]", 1)[0] for entry in entries if "no writable primary" in entry}
        wait_until(lambda: told() >= {"teams", "email", "sms"}, "the alert in the local sink", timeout=60)
        assert (log.stat().st_mode & 0o777) == 0o600
    finally:
        first.pcdb("server", "down", "--env", str(first.spec), check=False)
        first.pcdb("sandbox", "destroy", "--env", str(first.spec), "--yes", check=False)
    assert first.json("server", "status", "--env", str(first.spec), check=False)["up"] is False


def test_the_postgresql_backend_runs_the_server_on_a_cluster_of_its_own():
    folder = new_sandbox_root()
    pg = Service(folder, name="pgb", extra="  database: sandbox-postgres\n")
    try:
        pg.pcdb("server", "up", "--env", str(pg.spec))
        status = pg.json("server", "status", "--env", str(pg.spec))
        assert status["backend"] == "postgresql" and len(status["deployments"]) == 14
        socket_dir = pg.home / "postgres" / "run"
        with psycopg.connect(host=str(socket_dir), port=pg.port + 1, user="prefect", dbname="prefect") as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM deployment")}
        assert "install-pgb" in names                    # Prefect's history lives in that cluster
        dry = pg.json("install", "--env", str(pg.spec), "--dry-run", "--deployed")
        assert dry["status"] == "completed"
    finally:
        pg.pcdb("server", "down", "--env", str(pg.spec), check=False)
    assert not (folder / "orch" / "postgres" / "data" / "postmaster.pid").exists()
