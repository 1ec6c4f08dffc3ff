"""A probe writer: commits numbered rows through the application's connection path and records
which commits were acknowledged, so a failover's RTO and RPO are measured, not assumed.

A row whose COMMIT raised is "in doubt" (it may or may not be there), never counted as lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql as psql

from pcdb import clock
from pcdb.sql import query


@dataclass
class ProbeResult:
    acknowledged: list[int] = field(default_factory=list)
    acknowledged_at: dict[int, float] = field(default_factory=dict)  # id -> wall-clock time of the ack
    in_doubt: list[int] = field(default_factory=list)
    first_failure: float | None = None  # time.monotonic() of the first failed write
    first_recovery: float | None = None  # first successful write after it
    errors: list[str] = field(default_factory=list)

    @property
    def outage_seconds(self) -> float | None:
        """First failed write to first successful write after it (the measured RTO)."""
        if self.first_failure is None or self.first_recovery is None:
            return None
        return self.first_recovery - self.first_failure


class ProbeWriter:
    """Writes rows 1, 2, 3, ... into ``table`` in a background thread until stopped."""

    def __init__(self, conninfo: str, table: str = "pcdb_probe", interval: float = 0.005,
                 reconnect_deadline: float = 120.0, resolve: Callable[[], str] | None = None):
        """``resolve``: looks the application's name up again at every (re)connect, as a client
        resolving a DNS name does; without it the writer keeps ``conninfo``."""
        self.conninfo = conninfo
        self.resolve = resolve
        self.table_name = table
        self.table = psql.Identifier(table)
        self.interval = interval
        self.reconnect_deadline = reconnect_deadline
        self.result = ProbeResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-writer", daemon=True)

    def create_table(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(psql.SQL(query("probe.sql", "create_probe_table")).format(table=self.table))

    def switch_to(self, conninfo: str) -> None:
        """Write through another path from the next reconnect on (a changed connection string)."""
        self.conninfo = conninfo

    def drop_table(self, conninfo: str | None = None) -> None:
        with psycopg.connect(conninfo or self.conninfo, autocommit=True) as conn:
            conn.execute(psql.SQL(query("probe.sql", "drop_probe_table")).format(table=self.table))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> ProbeWriter:
        self.create_table()
        self._thread.start()
        return self

    def wait_for_rows(self, count: int, timeout: float = 30) -> None:
        """Block until ``count`` more rows have been acknowledged (or raise TimeoutError)."""
        target = len(self.result.acknowledged) + count
        deadline = time.monotonic() + timeout
        while len(self.result.acknowledged) < target:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TimeoutError(f"probe writer acknowledged {len(self.result.acknowledged)} rows, "
                                   f"wanted {target}; errors: {self.result.errors[-3:]}")
            time.sleep(0.01)

    def stop(self) -> ProbeResult:
        self._stop.set()
        self._thread.join(timeout=self.reconnect_deadline + 10)
        return self.result

    def missing(self, conninfo: str | None = None) -> list[int]:
        """Acknowledged rows that are not in the table now (the RPO, in rows), read through
        ``conninfo`` (default: the writer's own path)."""
        with psycopg.connect(conninfo or self.conninfo, autocommit=True) as conn:
            present = {r[0] for r in conn.execute(
                psql.SQL(query("probe.sql", "probe_ids")).format(table=self.table))}
        return [i for i in self.result.acknowledged if i not in present]

    def _run(self) -> None:
        insert = psql.SQL(query("probe.sql", "insert_probe_row")).format(table=self.table)
        conn: psycopg.Connection | None = None
        next_id = 1
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    if self.resolve is not None:
                        self.conninfo = self.resolve()
                    conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=2)
                conn.execute(insert, {"id": next_id})
                self.result.acknowledged.append(next_id)
                self.result.acknowledged_at[next_id] = clock.now().timestamp()
                if self.result.first_failure is not None and self.result.first_recovery is None:
                    self.result.first_recovery = time.monotonic()
                next_id += 1
                self._stop.wait(self.interval)
            except psycopg.Error as exc:
                if self.result.first_failure is None:
                    self.result.first_failure = time.monotonic()
                self.result.errors.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                # The write may or may not have committed; its id is never reused.
                self.result.in_doubt.append(next_id)
                next_id += 1
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.02)
        if conn is not None:
            conn.close()
