"""The run ledger: an append-only, hash-chained evidence row per runbook run (who, what, when,
the outcome, the measured figures, the report and its SHA-256), kept on the managed server
itself so it outlives Prefect's 7-day events and 90-day run clean-up.

Each row's hash covers its content and the hash of the row before it, so an edited, inserted
or deleted row breaks the chain at that row; ``verify`` names the first broken one. A record
that cannot be written (the server unreachable, the database not installed yet) is spooled to
a local file and written, chained, before the next record: nothing is lost.

The chain alone cannot catch its owner: whoever can write the table can drop it, cut its tail,
or rewrite every row with recomputed hashes. So every row is also anchored outside the database
(``pcdb/anchors.py``), and ``verify`` compares the chain with the anchors, each row's report
with its write-once archive, and re-verifies every signed decision the row holds.

A row's hash is taken over the canonical form the database gives back (hash version 2): the
JSON columns as PostgreSQL's own ``jsonb`` text, so numbers that jsonb normalises (``-0.0``,
``1e+16``) hash the same when read back, and a row verifies right after it is written (the
append is refused otherwise). Rows written before that (version 1) keep their first hash.
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

from pcdb import clock
from pcdb.anchors import AnchorConflict, AnchorError, Anchors
from pcdb.errors import PcdbError
from pcdb.private import private_dir
from pcdb.sql import query

GENESIS = "0" * 64
HASH_VERSION = 2
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
    decisions: list = field(default_factory=list)    # signed (or claimed) decisions of the run

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


def row_hash_v1(prev_hash: str, seq: int, recorded_at: datetime, record: RunRecord) -> str:
    """Hash version 1 (rows written before version 2): SHA-256 over the row's JSON as Python
    wrote it. A number jsonb normalises differently reads back with another hash."""
    body = {**record.as_json(), "parameters": _plain(record.parameters), "figures": _plain(record.figures),
            "seq": seq, "recorded_at": _ts(recorded_at), "prev_hash": prev_hash}
    body.pop("decisions")
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


_SCALARS = ("run_id", "flow", "deployment", "environment", "triggered_by", "state", "report_path",
            "report_sha256", "report_archive")
_JSON = ("parameters", "figures", "decisions")


def row_hash_v2(prev_hash: str, seq: int, recorded_at: datetime, scalars: dict, started_at: datetime | None,
                ended_at: datetime | None, json_texts: dict[str, str]) -> str:
    """Hash version 2: SHA-256 over the row's scalars and the database's own text of its JSON
    columns (``jsonb::text``), which is what a later read gives back, byte for byte."""
    body = {**{k: scalars[k] for k in _SCALARS}, **{k: json_texts[k] for k in _JSON},
            "started_at": _ts(started_at), "ended_at": _ts(ended_at), "seq": seq, "recorded_at": _ts(recorded_at),
            "prev_hash": prev_hash, "v": 2}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _q(name: str, schema: str) -> psql.Composed:
    return psql.SQL(query("ledger.sql", name)).format(schema=psql.Identifier(schema))


def ensure_ledger(conn: psycopg.Connection, schema: str) -> None:
    """Create the ledger and its append-only guard when missing, and give a ledger of an earlier
    pcdb the columns of hash version 2 (idempotent)."""
    if conn.execute(query("ledger.sql", "ledger_exists"), {"name": f"{schema}.run_ledger"}).fetchone()[0]:
        if not conn.execute(query("ledger.sql", "has_decisions"), {"schema": schema}).fetchone()[0]:
            conn.execute(_q("add_version_2_columns", schema))   # metadata only: no row is rewritten
        return
    with conn.transaction():
        conn.execute(psql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psql.Identifier(schema)))
        for name in ("create_ledger", "add_version_2_columns", "create_append_only_guard", "guard_rows",
                     "guard_truncate"):
            conn.execute(_q(name, schema))


class LedgerError(PcdbError):
    """A row could not be appended as it must be (it would not verify)."""


def append(conn: psycopg.Connection, schema: str, record: RunRecord) -> tuple[int, str]:
    """Append one chained row (hash version 2); returns its sequence number and hash.

    The row is read back inside the same transaction and verified before it commits.

    Raises:
        LedgerError: the row read back does not verify (nothing is appended).
    """
    ensure_ledger(conn, schema)
    values = {"parameters": _plain(record.parameters), "figures": _plain(record.figures),
              "decisions": _plain(record.decisions)}
    with conn.transaction():
        conn.execute(_q("lock_ledger", schema))
        head = conn.execute(_q("last_row", schema)).fetchone()
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        recorded_at = clock.now()
        texts = dict(zip(_JSON, conn.execute(query("ledger.sql", "canonical_json"),
                                             {k: Jsonb(v) for k, v in values.items()}).fetchone()))
        digest = row_hash_v2(prev, seq, recorded_at, record.as_json(), record.started_at, record.ended_at, texts)
        row = {**record.as_json(), "started_at": record.started_at, "ended_at": record.ended_at,
               **{k: Jsonb(v) for k, v in values.items()}, "seq": seq, "recorded_at": recorded_at,
               "prev_hash": prev, "row_hash": digest, "hash_version": HASH_VERSION}
        conn.execute(_q("append", schema), row)
        back = dict(zip(_VERIFY_COLUMNS, conn.execute(_q("row_for_verify", schema), {"seq": seq}).fetchone()))
        problem = _chain_problem(back, prev, seq)
        if problem:
            raise LedgerError(f"the ledger row for run {record.run_id} would not verify once written ({problem}); "
                              "it was not appended")
    return seq, digest


# The figure a runbook records when it moved the primary's timeline on purpose, as a test of its
# own (the install's Phase 7 fails over and back): {"check": ..., "timelines": [2, 3]}. The health
# rule reads it (pcdb/health.py ``_planned_failover``).
PLANNED_FAILOVERS = "planned_failovers"
# The flows that record it (flows/install.py, flows/upgrade.py): a move seen while one of them holds
# the environment is held until its row is written (pcdb/health.py ``_held_move``).
PLANNED_FAILOVER_FLOWS = ("install", "upgrade")
_COLUMNS = ("seq", "recorded_at", "run_id", "flow", "deployment", "environment", "parameters", "triggered_by",
            "started_at", "ended_at", "state", "figures", "report_path", "report_sha256", "report_archive",
            "prev_hash", "row_hash", "decisions", "hash_version")
# What verification reads: the JSON columns as the database's text, not parsed.
_VERIFY_COLUMNS = ("seq", "recorded_at", "run_id", "flow", "deployment", "environment", "triggered_by",
                   "started_at", "ended_at", "state", "report_path", "report_sha256", "report_archive", "prev_hash",
                   "row_hash", "hash_version", "parameters", "figures", "decisions")


def _computed_hash(row: dict, prev: str) -> str:
    """The hash a row read for verification must have, by its hash version."""
    if row["hash_version"] == 1:
        record = RunRecord(**{k: row[k] for k in RunRecord.__dataclass_fields__ if k not in (*_JSON,)},
                           parameters=json.loads(row["parameters"]), figures=json.loads(row["figures"]))
        return row_hash_v1(prev, row["seq"], row["recorded_at"], record)
    return row_hash_v2(prev, row["seq"], row["recorded_at"], row, row["started_at"], row["ended_at"],
                       {k: row[k] for k in _JSON})


def _chain_problem(row: dict, prev: str, expected_seq: int) -> str | None:
    if row["seq"] != expected_seq:
        return f"row {expected_seq} is missing (next row is {row['seq']}): a row was deleted"
    if row["prev_hash"] != prev:
        return "its link to the row before does not match: a row before it was deleted or replaced"
    if _computed_hash(row, prev) != row["row_hash"]:
        return "its content does not match its hash: the row was edited"
    return None


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


@dataclass
class Verification:
    """What ``verify`` found: ``ok`` with every problem, the first one named as ``first_broken``."""

    ok: bool
    rows: int
    first_broken: dict | None = None
    problems: list[dict] = field(default_factory=list)
    anchors: dict | None = None          # {where, anchored, unanchored: [seq...]}, None without a store
    signatures: int = 0                  # signed decisions re-verified
    reports: dict = field(default_factory=lambda: {"checked": 0, "unreadable": 0})
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "first_broken": self.first_broken, "problems": self.problems,
                "anchors": self.anchors, "signatures": self.signatures, "reports": self.reports,
                "warnings": self.warnings}


ReportReader = Callable[[str], bytes | None]      # an archived report's bytes; None: unreadable
DecisionCheck = Callable[[dict, str], str | None]  # (a stored decision, environment) -> problem or None


def verify(conn: psycopg.Connection, schema: str, anchors: Anchors | None = None,
           read_archive: ReportReader | None = None, check_decision: DecisionCheck | None = None) -> Verification:
    """Walk the chain from the first row and compare it with what lives outside the database.

    A row is broken when its number, its link or its hash is wrong (an edit, an insertion, a
    deletion), when its hash differs from its anchor (the chain rewritten with recomputed
    hashes), when an anchored row is gone (the tail cut, the table dropped), when its archived
    report or its report file no longer has the recorded SHA-256, or when a signed decision it
    holds does not verify. Every problem is listed; the first is ``first_broken``.
    """
    kept = anchors.read() if anchors is not None else {}
    result = Verification(True, 0, anchors={"where": anchors.where, "anchored": 0, "unanchored": []}
                          if anchors is not None else None)
    if not conn.execute(query("ledger.sql", "ledger_exists"), {"name": f"{schema}.run_ledger"}).fetchone()[0]:
        if kept:
            _broken(result, {"seq": min(kept), "run_id": None, "flow": None,
                             "reason": f"the ledger table {schema}.run_ledger is missing, but {len(kept)} row(s) were "
                                       f"anchored in {anchors.where}: the ledger was dropped"})
        return result
    prev, expected_seq = GENESIS, 1
    for raw in conn.execute(_q("all_rows_for_verify", schema)):
        row = dict(zip(_VERIFY_COLUMNS, raw))
        result.rows += 1
        where = {"seq": row["seq"], "run_id": row["run_id"], "flow": row["flow"]}
        problem = _chain_problem(row, prev, expected_seq)
        if problem is None and anchors is not None:
            anchored = kept.get(row["seq"])
            if anchored is None:
                result.anchors["unanchored"].append(row["seq"])
            elif anchored != row["row_hash"]:
                problem = f"its hash differs from its anchor in {anchors.where}: the chain was rewritten"
            else:
                result.anchors["anchored"] += 1
        if problem:
            _broken(result, {**where, "reason": problem})
        for reason in _report_problems(row, read_archive, result):
            _broken(result, {**where, "reason": reason})
        if check_decision is not None:
            for decision in json.loads(row["decisions"]):
                reason = check_decision(decision, row["environment"])
                result.signatures += bool(decision.get("signature"))
                if reason:
                    _broken(result, {**where, "reason": f"decision '{decision.get('step')}': {reason}"})
        prev, expected_seq = row["row_hash"], row["seq"] + 1
    cut = sorted(s for s in kept if s >= expected_seq)
    if cut:
        _broken(result, {"seq": cut[0], "run_id": None, "flow": None,
                         "reason": f"row {cut[0]} is missing: it was anchored in {anchors.where}, and the ledger ends at "
                                   f"row {expected_seq - 1}: its tail was deleted"})
    if result.anchors and result.anchors["unanchored"]:
        gone = result.anchors["unanchored"]
        result.warnings.append(f"{len(gone)} row(s) not anchored yet (from row {gone[0]}): the evidence store could not "
                               "be written when they were recorded; the next run anchors them")
    return result


def _broken(result: Verification, problem: dict) -> None:
    result.ok = False
    result.problems.append(problem)
    if result.first_broken is None or (problem["seq"] or 0) < (result.first_broken["seq"] or 0):
        result.first_broken = problem


def _report_problems(row: dict, read_archive: ReportReader | None, result: Verification) -> list[str]:
    """The row's report, archived and local, against its recorded SHA-256."""
    recorded = row["report_sha256"]
    if not recorded:
        return []
    problems = []
    if row["report_archive"] and read_archive is not None:
        data = read_archive(row["report_archive"])
        if data is None:
            result.reports["unreadable"] += 1
            result.warnings.append(f"row {row['seq']}: the archived report {row['report_archive']} could not be read")
        else:
            result.reports["checked"] += 1
            if hashlib.sha256(data).hexdigest() != recorded:
                problems.append(f"its archived report {row['report_archive']} does not match the recorded SHA-256: "
                                "the archive was changed")
    if row["report_path"] and Path(row["report_path"]).is_file() and file_sha256(row["report_path"]) != recorded:
        problems.append(f"the report file {row['report_path']} does not match the recorded SHA-256: it was changed "
                        "after the run" + (f" (the archived copy is {row['report_archive']})" if row["report_archive"]
                                           else ""))
    return problems


class Spool:
    """Records not yet written to the ledger (one JSON line each, file mode 0600)."""

    def __init__(self, path: Path):
        self.path = path

    def add(self, record: RunRecord) -> None:
        private_dir(self.path.parent)
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

    @property
    def anchor_path(self) -> Path:
        return self.path.with_suffix(".anchors")

    def pending_anchors(self) -> list[tuple[int, str]]:
        """Rows written to the ledger whose anchors could not be written yet: (seq, row hash)."""
        if not self.anchor_path.exists():
            return []
        return [(int(seq), digest) for seq, digest in
                (line.split() for line in self.anchor_path.read_text().splitlines() if line.strip())]

    def keep_anchors(self, left: list[tuple[int, str]]) -> None:
        if not left:
            self.anchor_path.unlink(missing_ok=True)
            return
        private_dir(self.path.parent)
        tmp = self.anchor_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(f"{seq} {digest}\n" for seq, digest in left))
        os.replace(tmp, self.anchor_path)


def record(connect: Connect, schema: str, run: RunRecord, spool: Spool, anchors: Anchors | None = None) -> dict:
    """Write the spooled records, then ``run``; on a database failure spool ``run`` instead.
    Each row written is anchored (with the anchors a failed write left pending).

    Returns ``{"ledger": "recorded", "seq": n, "anchored": bool}`` or ``{"ledger": "spooled",
    "spool": path, "why": ...}``."""
    pending = spool.pending()
    written: list[tuple[int, str]] = []
    try:
        with connect() as conn:
            for earlier in pending:
                written.append(append(conn, schema, earlier))
            written.append(append(conn, schema, run))
    except (psycopg.Error, OSError, PcdbError) as exc:
        spool.clear(len(written))
        spool.add(run)
        _anchor(anchors, spool, written)
        return {"ledger": "spooled", "spool": str(spool.path), "why": str(exc).strip().splitlines()[0]}
    except Exception:
        spool.clear(len(written))
        spool.add(run)
        raise
    spool.clear(len(written))
    anchored = _anchor(anchors, spool, written)
    return {"ledger": "recorded", "seq": written[-1][0], "anchored": anchored}


def _anchor(anchors: Anchors | None, spool: Spool, written: list[tuple[int, str]]) -> bool:
    """Anchor the rows just written and those an earlier failure left pending; what cannot be
    anchored now waits in the spool's anchor file. A conflicting anchor is raised: it is evidence."""
    if anchors is None:
        return False
    todo = [*spool.pending_anchors(), *written]
    left = []
    for seq, digest in todo:
        try:
            anchors.put(seq, digest)
        except AnchorConflict:
            raise
        except AnchorError:
            left.append((seq, digest))
    spool.keep_anchors(left)
    return not left
