"""amcheck through SQL, for a server where pg_amcheck cannot run locally (an Azure restore): every
btree index with heapallindexed, every table with verify_heapam. A probe any layer may run on a
connection it holds.
"""

from __future__ import annotations

import psycopg

from pcdb.sql import query


def amcheck_sql(conn: psycopg.Connection, heapallindexed: bool = False) -> tuple[bool, str]:
    """amcheck through SQL (for servers where pg_amcheck cannot run locally, e.g. an Azure restore):
    every btree index (with heapallindexed when asked), every table with verify_heapam."""
    conn.execute(query("verify.sql", "create_amcheck"))
    tables = conn.execute(query("verify.sql", "amcheck_tables")).fetchall()
    try:
        # raises on the first bad index
        conn.execute(query("verify.sql", "amcheck_indexes"), {"heapallindexed": heapallindexed}).fetchall()
        index_error = None
    except psycopg.errors.IndexCorrupted as exc:
        index_error = str(exc).strip().splitlines()[0]
    problems = [f"{t} block {b}: {m}" for t, b, m in tables[:5]] + ([index_error] if index_error else [])
    return not problems, "; ".join(problems) if problems else "no corruption found (tables and btree indexes)"
