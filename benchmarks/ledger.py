"""Benchmark: `history verify` over a ledger of 100,000 rows, each with a signed decision.

The rows are made as pcdb makes them (hash version 2, the database's own jsonb text, anchors
0400 files) but in bulk: the canonical JSON texts come from PostgreSQL in batches and the rows go
in with COPY. Each row holds one decision signed with an Ed25519 key, in OpenSSH's SSHSIG format
(made here with `cryptography`; a sample is checked with `ssh-keygen -Y verify`, the reference).
Measured: pcdb's verification (chain + anchors + every signature checked again), the same chain
without signatures, and what `ssh-keygen -Y verify` would take for the same signatures (timed on
a sample and scaled, one process per signature as a shell loop would do it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from psycopg import sql as psql


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def sshsig(private, public_blob: bytes, message: bytes, namespace: str = "pcdb") -> str:
    """An armored OpenSSH signature (PROTOCOL.sshsig) of ``message`` by an Ed25519 key."""
    digest = hashlib.sha512(message).digest()
    signed = b"SSHSIG" + _string(namespace.encode()) + _string(b"") + _string(b"sha512") + _string(digest)
    signature = _string(b"ssh-ed25519") + _string(private.sign(signed))
    blob = (b"SSHSIG" + struct.pack(">I", 1) + _string(public_blob) + _string(namespace.encode()) + _string(b"")
            + _string(b"sha512") + _string(signature))
    text = base64.b64encode(blob).decode()
    return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(text[i:i + 70] for i in range(0, len(text), 70)) + \
        "\n-----END SSH SIGNATURE-----\n"


def ledger_verify(rounds: int, rows: int = 100_000) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pcdb import decisions, ledger
    from pcdb.anchors import FileAnchors
    from pcdb.context import RunbookContext
    from pcdb.decisions import Request, plan_sha256
    from pcdb.sshsig import PublicKey
    from tests.conftest import new_target

    target = new_target()
    target.ensure_resource_group()
    target.sandbox.ensure_ha()
    target.ensure_database()
    ctx = RunbookContext(target.env, target)
    folder = Path(tempfile.mkdtemp(prefix="pcdb-bench-ledger-"))
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(public.split()[1])
    pub = PublicKey.parse(public.decode())
    schema = "pcdb_bench"
    try:
        began = time.perf_counter()
        made = _fill(ctx, schema, rows, key, blob, pub, FileAnchors(folder / "anchors"), Request, plan_sha256, ledger)
        fill = time.perf_counter() - began
        sample = _reference_sample(folder, public.decode(), made[:20])
        timings, plain = [], []
        with ctx.connect() as conn:
            for _ in range(rounds):
                began = time.perf_counter()
                result = ledger.verify(conn, schema, FileAnchors(folder / "anchors"), None, decisions.recheck)
                timings.append(time.perf_counter() - began)
                assert result.ok and result.rows == rows and result.signatures == rows, result.as_dict()
                began = time.perf_counter()
                assert ledger.verify(conn, schema, FileAnchors(folder / "anchors")).ok
                plain.append(time.perf_counter() - began)
        return {"rows": rows, "signatures": rows, "fill_seconds": round(fill, 1),
                "history_verify_seconds": {"median": round(sorted(timings)[len(timings) // 2], 2),
                                           "worst": round(max(timings), 2), "n": len(timings)},
                "rows_per_second": round(rows / sorted(timings)[len(timings) // 2]),
                "chain_and_anchors_only_seconds": round(sorted(plain)[len(plain) // 2], 2),
                "ssh_keygen_verify_per_signature_ms": sample["per_signature_ms"],
                "ssh_keygen_for_all_signatures_seconds_estimated": round(sample["per_signature_ms"] * rows / 1000, 1),
                "note": "pcdb: the chain (hash version 2), the anchors (a 0400 file per row) and every stored signature "
                        "verified again in Python (cryptography). ssh-keygen: `ssh-keygen -Y verify` on 20 of the same "
                        "signatures, one process each, scaled to all rows; it accepted every one (the reference)."}
    finally:
        target.sandbox.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def _fill(ctx, schema, rows, key, blob, pub, anchors, Request, plan_sha256, ledger) -> list[tuple[str, str]]:
    """``rows`` ledger rows with a signed decision each; returns (message, signature) pairs."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    made = []
    with ctx.connect() as conn:
        conn.execute(psql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psql.Identifier(schema)))
        ledger.ensure_ledger(conn, schema)
        prev = ledger.GENESIS
        batch = 5000
        for first in range(1, rows + 1, batch):
            chunk = []
            for seq in range(first, min(first + batch, rows + 1)):
                run = f"00000000-0000-0000-0000-{seq:012d}"
                plan = plan_sha256({"seq": seq})
                request = Request("bench", run, "drill-decision", plan, ("kim",), timedelta(hours=24))
                at = start + timedelta(minutes=seq)
                message = request.message("kim", "approve", at)
                signature = sshsig(key, blob, message.encode())
                decision = {"step": "drill-decision", "run_id": run, "environment": "bench", "decision": "approve",
                            "signer": "kim", "signed_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "plan_sha256": plan,
                            "signed": True, "fingerprint": pub.fingerprint, "key": pub.line, "signature": signature,
                            "message": message, "how": "signed"}
                record = ledger.RunRecord(run_id=run, flow="dr-drill", environment="bench", state="Completed",
                                          triggered_by="signed by kim", parameters={"scenario": "zone"},
                                          started_at=at, ended_at=at + timedelta(seconds=30),
                                          figures={"rto_seconds": 0.2, "rpo_rows_lost": 0}, decisions=[decision])
                chunk.append((seq, at + timedelta(seconds=31), record))
                made.append((message, signature))
            texts = conn.execute("SELECT p::jsonb::text, f::jsonb::text, d::jsonb::text FROM unnest(%s::text[], "
                                 "%s::text[], %s::text[]) AS x(p, f, d)",
                                 ([json.dumps(r.parameters) for _, _, r in chunk], [json.dumps(r.figures) for _, _, r in chunk],
                                  [json.dumps(r.decisions) for _, _, r in chunk])).fetchall()
            copy_sql = psql.SQL("COPY {}.run_ledger (seq, recorded_at, run_id, flow, deployment, environment, parameters, "
                                "triggered_by, started_at, ended_at, state, figures, report_path, report_sha256, "
                                "report_archive, prev_hash, row_hash, decisions, hash_version) FROM STDIN").format(
                psql.Identifier(schema))
            with conn.cursor().copy(copy_sql) as copy:
                for (seq, recorded, record), (p, f, d) in zip(chunk, texts):
                    digest = ledger.row_hash_v2(prev, seq, recorded, record.as_json(), record.started_at,
                                                record.ended_at, {"parameters": p, "figures": f, "decisions": d})
                    copy.write_row((seq, recorded, record.run_id, record.flow, None, record.environment, p,
                                    record.triggered_by, record.started_at, record.ended_at, record.state, f, None,
                                    None, None, prev, digest, d, 2))
                    anchors.put(seq, digest)
                    prev = digest
    return made


def _reference_sample(folder: Path, public: str, sample: list[tuple[str, str]]) -> dict:
    """`ssh-keygen -Y verify` on some of the signatures: it must accept each; its time per signature."""
    allowed = folder / "allowed_signers"
    allowed.write_text(f"kim namespaces=\"pcdb\" {public}\n")
    began = time.perf_counter()
    for i, (message, signature) in enumerate(sample):
        sig = folder / f"s{i}.sig"
        sig.write_text(signature)
        done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "kim", "-n", "pcdb", "-s",
                               str(sig)], input=message.encode(), capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
    return {"per_signature_ms": round((time.perf_counter() - began) / len(sample) * 1000, 2)}
