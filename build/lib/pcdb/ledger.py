"""The run ledger: an append-only, hash-chained evidence row per runbook run (who, what, when,
the outcome, the measured figures, the report and its SHA-256), kept on the managed server
itself so it outlives Prefect's 7-day events and 90-day run clean-up.

Each row's hash covers its content and the hash of the row before it, so an edited, inserted
or deleted row breaks the chain at that row; ``verify`` names the first broken one. A record
that cannot be written (the server unreachable, the database not installed yet) is spooled to
a local file and written, chained, before the next record: nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql as psql
from psycopg.types.json import Jsonb

from pcdb.errors import PcdbError
from pcdb.sql import query

GENESIS = "0" * 64
_SECRETISH = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)
Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


@dataclass(frozen=True)
class RunRecord:
    """What one runbook run leaves as evidence (never a secret)."""

    run_id: str
    flow: str
    environment: str
    state: str
    triggered_by: str
    deployment: str | None = None
    parameters: dict = field(default_factory=dict)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    figures: dict = field(default_factory=dict)
    report_path: str | None = None
    report_sha256: str | None = None
    report_archive: str | None = None

    def as_json(self) -> dict:
        out = asdict(self)
        for key in ("started_at", "ended_at"):
            out[key] = _ts(out[key])
        return out

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        data = dict(data)
        for key in ("started_at", "ended_at"):
            data[key] = datetime.fromisoformat(data[key]) if data.get(key) else None
        return cls(**data)


def clean_parameters(parameters: dict) -> dict:
    """A run's parameters as evidence: JSON values only, anything named like a secret left out."""
    return {k: _plain(v) for k, v in parameters.items() if not _SECRETISH.search(k)}


def _plain(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value else None


def row_hash(prev_hash: str, seq: int, recorded_at: datetime, record: RunRecord) -> str:
    """SHA-256 over the row's canonical JSON, the previous row's hash included."""
    body = {**record.as_json(), "parameters": _plain(record.parameters), "figures": _plain(record.figures),
            "seq": seq, "recorded_at": _ts(recorded_at), "prev_hash": prev_hash}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _q(name: str, schema: str) -> psql.Composed:
    return psql.SQL(query("ledger.sql", name)).format(schema=psql.Identifier(schema))


def ensure_ledger(conn: psycopg.Connection, schema: str) -> None:
    """Create the ledger and its append-only guard when missing (idempotent)."""
    if conn.execute(query("ledger.sql", "ledger_exists"), {"name": f"{schema}.run_ledger"}).fetchone()[0]:
        return
    with conn.transaction():
        conn.execute(psql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psql.Identifier(schema)))
        for name in ("create_ledger", "create_append_only_guard", "guard_rows", "guard_truncate"):
            conn.execute(_q(name, schema))


def append(conn: psycopg.Connection, schema: str, record: RunRecord) -> int:
    """Append one chained row; returns its sequence number."""
    ensure_ledger(conn, schema)
    with conn.transaction():
        conn.execute(_q("lock_ledger", schema))
        head = conn.execute(_q("last_row", schema)).fetchone()
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        recorded_at = datetime.now(timezone.utc)
        row = {**record.as_json(), "started_at": record.started_at, "ended_at": record.ended_at,
               "parameters": Jsonb(_plain(record.parameters)), "figures": Jsonb(_plain(record.figures)),
               "seq": seq, "recorded_at": recorded_at, "prev_hash": prev,
               "row_hash": row_hash(prev, seq, recorded_at, record)}
        conn.execute(_q("append", schema), row)
    return seq


_COLUMNS = ("seq", "recorded_at", "run_id", "flow", "deployment", "environment", "parameters", "triggered_by",
            "started_at", "ended_at", "state", "figures", "report_path", "report_sha256", "report_archive",
            "prev_hash", "row_hash")


def _record_of(row: dict) -> RunRecord:
    return RunRecord(**{k: row[k] for k in RunRecord.__dataclass_fields__})


def rows(conn: psycopg.Connection, schema: str, since: datetime, flow: str | None = None) -> list[dict]:
    """Ledger rows recorded since ``since`` (of one flow if given), newest first."""
    if not conn.execute(query("ledger.sql", "ledger_exists"), {"name": f"{schema}.run_ledger"}).fetchone()[0]:
        return []
    found = conn.execute(_q("rows_since", schema), {"since": since, "flow": flow}).fetchall()
    return [dict(zip(_COLUMNS, r)) for r in found]


def row_of_run(conn: psycopg.Connection, schema: str, run_id: str) -> dict | None:
    """The newest ledger row of one flow run, if it was recorded."""
    if not conn.execute(query("ledger.sql", "ledger_exists"), {"name": f"{schema}.run_ledger"}).fetchone()[0]:
        return None
    found = conn.execute(_q("row_of_run", schema), {"run_id": run_id}).fetchone()
    return dict(zip(_COLUMNS, found)) if found else None


def figures_line(figures: dict) -> str:
    """The measured figures of a run in one short line, for tables and notifications."""
    parts = []
    if figures.get("checks"):
        parts.append(f"{figures['checks']['passed']}/{figures['checks']['total']} checks")
    if figures.get("rto_seconds") is not None:
        parts.append(f"RTO {figures['rto_seconds']:.3f}s")
    if "rpo_rows_lost" in figures:
        parts.append(f"{figures['rpo_rows_lost']} rows lost")
    if figures.get("restore_seconds") is not None:
        parts.append(f"restore {figures['restore_seconds']:.2f}s")
    if figures.get("dry_run"):
        parts.append("dry run")
    if figures.get("message"):
        parts.append(str(figures["message"])[:60])
    return ", ".join(parts) or "-"


@dataclass(frozen=True)
class Verification:
    ok: bool
    rows: int
    first_broken: dict | None = None

    def as_dict(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "first_broken": self.first_broken}


def verify(conn: psycopg.Connection, schema: str) -> Verification:
    """Walk the chain from the first row; the first row whose hash, link or number is wrong is
    named (an edit changes its hash, a deletion breaks the next row's link or numbering)."""
    if not conn.execute(query("ledger.sql", "ledger_exists"), {"name": f"{schema}.run_ledger"}).fetchone()[0]:
        return Verification(True, 0)
    prev, expected_seq, count = GENESIS, 1, 0
    for raw in conn.execute(_q("all_rows", schema)):
        row = dict(zip(_COLUMNS, raw))
        count += 1
        problem = None
        if row["seq"] != expected_seq:
            problem = f"row {expected_seq} is missing (next row is {row['seq']}): a row was deleted"
        elif row["prev_hash"] != prev:
            problem = "its link to the row before does not match: a row before it was deleted or replaced"
        elif row_hash(prev, row["seq"], row["recorded_at"], _record_of(row)) != row["row_hash"]:
            problem = "its content does not match its hash: the row was edited"
        if problem:
            return Verification(False, count, {"seq": row["seq"], "run_id": row["run_id"], "flow": row["flow"],
                                               "reason": problem})
        prev, expected_seq = row["row_hash"], row["seq"] + 1
    return Verification(True, count)


class Spool:
    """Records not yet written to the ledger (one JSON line each, file mode 0600)."""

    def __init__(self, path: Path):
        self.path = path

    def add(self, record: RunRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(json.dumps(record.as_json(), ensure_ascii=False) + "\n")

    def pending(self) -> list[RunRecord]:
        if not self.path.exists():
            return []
        return [RunRecord.from_json(json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()]

    def clear(self, written: int) -> None:
        """Drop the first ``written`` records (those now in the ledger)."""
        if written == 0 or not self.path.exists():
            return
        left = self.path.read_text().splitlines()[written:]
        if left:
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("".join(line + "\n" for line in left))
            os.replace(tmp, self.path)
        else:
            self.path.unlink(missing_ok=True)


def record(connect: Connect, schema: str, run: RunRecord, spool: Spool) -> dict:
    """Write the spooled records, then ``run``; on a database failure spool ``run`` instead.

    Returns ``{"ledger": "recorded", "seq": n}`` or ``{"ledger": "spooled", "spool": path, "why": ...}``."""
    pending = spool.pending()
    written = 0
    try:
        with connect() as conn:
            for earlier in pending:
                append(conn, schema, earlier)
                written += 1
            seq = append(conn, schema, run)
    except (psycopg.Error, OSError, PcdbError) as exc:
        spool.clear(written)
        spool.add(run)
        return {"ledger": "spooled", "spool": str(spool.path), "why": str(exc).strip().splitlines()[0]}
    except Exception:
        spool.clear(written)
        spool.add(run)
        raise
    spool.clear(written)
    return {"ledger": "recorded", "seq": seq}
