"""./dev bench unplanned-crash: kills of the primary under an independent writer (see __main__)."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BURST_BYTES = 3 * 2**30


def _kill(node) -> None:
    os.kill(int((node.data / "postmaster.pid").read_text().splitlines()[0]), signal.SIGKILL)


def _latest_log(node) -> Path:
    return max(node.log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)


def _kill_after_check_connection(node, timeout: float = 30) -> float:
    """SIGKILL the postmaster the moment the server logs the supervisor's connection as authorized
    (its query has not run yet); returns how long it waited."""
    log = _latest_log(node)
    began = time.monotonic()
    with log.open(errors="replace") as handle:
        handle.seek(0, os.SEEK_END)
        while time.monotonic() - began < timeout:
            line = handle.readline()
            if not line:
                time.sleep(0.001)
                continue
            if "connection authorized" in line and "application_name=pcdb-supervisor" in line:
                _kill(node)
                return time.monotonic() - began
    raise RuntimeError(f"no supervisor connection in {log} within {timeout:.0f}s")


def _wal_burst(conninfo: str, size: int) -> float:
    """Write about ``size`` bytes of WAL as fast as the server takes it; returns the seconds."""
    import psycopg

    began = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        conn.execute("CREATE TABLE IF NOT EXISTS bench_burst (pad text)")
        conn.execute("ALTER TABLE bench_burst ALTER COLUMN pad SET STORAGE PLAIN")
        while True:
            conn.execute("INSERT INTO bench_burst SELECT repeat(md5(g::text), 60) FROM generate_series(1, 100000) g")
            written = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0]
            if written >= size:
                break
            conn.execute("TRUNCATE bench_burst")
    return time.monotonic() - began


def _sync_back(target, deadline: float) -> bool:
    while time.monotonic() < deadline:
        status = target.sandbox.status()
        if not any("not synchronous" in p or "no writable" in p for p in status["problems"]) and any(
                n["role"] == "standby" and n["sync_state"] == "sync" for n in status["nodes"]):
            return True
        time.sleep(0.2)
    return False


def unplanned_crash(rounds: int) -> dict:
    from pcdb.probe import ProbeWriter
    from tests.conftest import destroy_all, new_target

    rounds_out: list[dict] = []
    planned: dict[str, list[float]] = {"forced": [], "planned": []}
    try:
        target = new_target()
        subprocess.run([sys.executable, "-m", "cli", "sandbox", "up", "--env", str(target.env_path)],
                       check=True, capture_output=True, timeout=600)
        after = target.sandbox.status()["supervisor"]["failover_after_seconds"]
        conninfo = target.endpoint("application").conninfo(target.admin, target.admin_password())
        kinds = ["random" if i % 2 == 0 else "after-check-connection" for i in range(rounds)] + ["after-3GiB-burst"]
        rng = random.Random(20261202)
        for kind in kinds:
            burst = None
            if kind == "after-3GiB-burst":
                burst = round(_wal_burst(conninfo, BURST_BYTES), 1)
            probe = ProbeWriter(conninfo, table="bench_probe").start()
            probe.wait_for_rows(50)
            seen = len([e for e in target.sandbox.state.events if e["event"] == "auto-failover"])
            primary = target.sandbox.primary()
            if kind == "after-check-connection":
                _kill_after_check_connection(primary)
            else:
                time.sleep(rng.uniform(0, 1.0))
                _kill(primary)
            killed = time.monotonic()
            failed_over = True
            while len([e for e in target.sandbox.state.events if e["event"] == "auto-failover"]) == seen:
                if time.monotonic() > killed + after + 180:
                    failed_over = False
                    break
                time.sleep(0.1)
            probe.wait_for_rows(50, timeout=120)
            outcome = probe.stop()
            synced = _sync_back(target, time.monotonic() + 600)
            rounds_out.append({"kind": kind, "automatic_failover": failed_over,
                               "writer_longest_gap_seconds": round(outcome.outage_seconds or 0.0, 2),
                               "acknowledged_rows": len(outcome.acknowledged),
                               "acknowledged_rows_lost": len(probe.missing()),
                               "synchronous_standby_back": synced,
                               "seconds_without_synchronous_standby": round(time.monotonic() - killed, 1) if synced
                               else None, **({"burst_seconds": burst} if burst else {}),
                               "rejoined": next((e.get("how") for e in reversed(target.sandbox.state.events)
                                                 if e["event"] == "rejoined"), None)})
            probe.drop_table()
        for kind in ("forced", "planned"):
            for _ in range(3):
                probe = ProbeWriter(conninfo, table="bench_probe").start()
                probe.wait_for_rows(50)
                target.failover(kind)
                probe.wait_for_rows(50, timeout=120)
                planned[kind].append(probe.stop().outage_seconds or 0.0)
                probe.drop_table()
    finally:
        destroy_all()
    gaps = [r["writer_longest_gap_seconds"] for r in rounds_out]
    return {"rounds": rounds_out, "auto_failover_after_seconds": after,
            "every_round_failed_over": all(r["automatic_failover"] for r in rounds_out),
            "writer_longest_gap_seconds": {"median": statistics.median(gaps), "worst": max(gaps),
                                           "limit": after + 5},
            "acknowledged_rows": sum(r["acknowledged_rows"] for r in rounds_out),
            "acknowledged_rows_lost": sum(r["acknowledged_rows_lost"] for r in rounds_out),
            "synchronous_standby_back_every_round": all(r["synchronous_standby_back"] for r in rounds_out),
            "seconds_without_synchronous_standby": {
                "median": statistics.median([r["seconds_without_synchronous_standby"] or 0 for r in rounds_out]),
                "worst": max(r["seconds_without_synchronous_standby"] or 0 for r in rounds_out)},
            "pcdb_driven_failover_gap_seconds": {k: {"median": round(statistics.median(v), 3), "worst": round(max(v), 3)}
                                                 for k, v in planned.items()},
            "note": "random = a kill at a random moment in the supervisor's half-second loop; after-check-connection "
                    "= the kill the moment the primary logs the supervisor's connection as authorized (before its "
                    "query runs: the case that once disabled the failover); after-3GiB-burst = 3 GiB of WAL written "
                    "(checkpoints recycle the old primary's segments), then the kill. seconds_without_synchronous_"
                    "standby counts from the kill to a synchronous standby streaming again."}
