"""The restore test's fingerprints (pcdb/backups.py): the same data gives the same fingerprint
however it is cut and however many connections read it; a changed value changes it; a snapshot
exported by the source's transaction is what every connection reads."""

import psycopg
import pytest

from pcdb import backups
from tests.conftest import new_target

pytestmark = pytest.mark.postgres
SCHEMA = "fp"


@pytest.fixture(scope="module")
def db():
    target = new_target()
    target.ensure_server()
    target.ensure_database()
    info = target.endpoint().conninfo(target.admin, target.admin_password())

    def connect():
        return psycopg.connect(info, autocommit=True)
    with connect() as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.plain (id int PRIMARY KEY, note text, amount numeric, at timestamptz)")
        conn.execute(f"INSERT INTO {SCHEMA}.plain SELECT g, md5(g::text), g * 1.5, '2026-01-01'::timestamptz "
                     "+ g * interval '1 min' FROM generate_series(1, 20000) g")
        conn.execute(f"CREATE TABLE {SCHEMA}.log (day date NOT NULL, n int) PARTITION BY RANGE (day)")
        for month in (1, 2):
            conn.execute(f"CREATE TABLE {SCHEMA}.log_{month} PARTITION OF {SCHEMA}.log "
                         f"FOR VALUES FROM ('2026-{month:02}-01') TO ('2026-{month + 1:02}-01')")
        conn.execute(f"INSERT INTO {SCHEMA}.log SELECT '2026-01-01'::date + g % 59, g FROM generate_series(1, 5000) g")
        conn.execute(f"CREATE TABLE {SCHEMA}.doc (id int, body json)")   # json: no extended hash function
        conn.execute(f"INSERT INTO {SCHEMA}.doc SELECT g, json_build_object('g', g) FROM generate_series(1, 300) g")
        conn.execute(f"CREATE TABLE {SCHEMA}.empty_parent (day date) PARTITION BY RANGE (day)")
    yield connect
    target.sandbox.destroy()


def test_the_same_data_has_the_same_fingerprint_however_it_is_cut_and_read(db, monkeypatch):
    with db() as conn:
        whole = backups.fingerprints(conn, SCHEMA)
    monkeypatch.setattr(backups, "CHUNK_BLOCKS", 3)            # many small block ranges
    with db() as conn:
        cut = backups.fingerprints(conn, SCHEMA, more=db, jobs=4)
    assert cut.tables == whole.tables and cut.jobs == 4
    assert set(whole.tables) == {"plain", "log", "doc", "empty_parent"}   # partitions under their root
    assert whole.tables["plain"][0] == 20000 and whole.tables["log"][0] == 5000 and whole.tables["doc"][0] == 300
    assert whole.tables["empty_parent"] == (0, 0) and all(c != 0 for n, c in whole.tables.values() if n)
    assert whole.as_text == {"doc"} and cut.as_text == {"doc"}  # json rows hashed as text, the rest not


def test_every_changed_value_changes_the_fingerprint(db):
    with db() as conn:
        seen = {backups.fingerprints(conn, SCHEMA).tables["plain"][1]}
        for row in range(1, 201):                                   # 200 one-value edits, no collision
            conn.execute(f"UPDATE {SCHEMA}.plain SET amount = amount + 0.01 WHERE id = %s", (row * 97,))
            checksum = backups.fingerprints(conn, SCHEMA).tables["plain"][1]
            assert checksum not in seen, f"edit {row} gave a checksum seen before"
            seen.add(checksum)
        rows, checksum = backups.fingerprints(conn, SCHEMA).tables["plain"]
        conn.execute(f"DELETE FROM {SCHEMA}.plain WHERE id = 5")        # a missing row
        gone = backups.fingerprints(conn, SCHEMA).tables["plain"]
        assert gone[0] == rows - 1 and gone[1] != checksum
        conn.execute(f"UPDATE {SCHEMA}.doc SET body = json_build_object('g', -1) WHERE id = 7")
        before = backups.fingerprints(conn, SCHEMA).tables["doc"]
        conn.execute(f"UPDATE {SCHEMA}.doc SET body = json_build_object('g', 7) WHERE id = 7")
        assert backups.fingerprints(conn, SCHEMA).tables["doc"] != before


def test_every_connection_reads_the_moment_the_source_exported(db, monkeypatch):
    monkeypatch.setattr(backups, "CHUNK_BLOCKS", 3)
    with db() as conn, db() as writer:
        expected = backups.fingerprints(conn, SCHEMA).tables
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            writer.execute(f"INSERT INTO {SCHEMA}.plain SELECT g, 'later', 0, now() FROM generate_series(30001, 31000) g")
            then = backups.fingerprints(conn, SCHEMA, more=db, jobs=3, snapshot=snapshot)
        assert then.tables == expected                   # the 1000 later rows are in no piece
        assert backups.fingerprints(conn, SCHEMA).tables["plain"][0] == expected["plain"][0] + 1000


def test_a_seeded_sample_reads_the_same_block_ranges_and_a_copy_read_on_them_catches_a_changed_row(db, monkeypatch):
    """The sampled restore test: the seed picks the ranges (the same seed, the same ranges), every
    heap's last range is always read, and the copy is read on the source's ranges."""
    monkeypatch.setattr(backups, "SAMPLE_BLOCKS", 2)          # many 2-block ranges in these small tables
    with db() as conn:
        full = backups.fingerprints(conn, SCHEMA)
        sample = backups.fingerprints(conn, SCHEMA, sample=backups.Sample(20261207, 30))
        again = backups.fingerprints(conn, SCHEMA, sample=backups.Sample(20261207, 30), more=db, jobs=3)
        other = backups.fingerprints(conn, SCHEMA, sample=backups.Sample(20261208, 30))
        assert sample.pieces == again.pieces and sample.tables == again.tables and other.pieces != sample.pieces
        assert full.blocks_read == full.blocks and 0 < sample.blocks_read < sample.blocks == full.blocks
        assert 0 < sample.tables["plain"][0] < full.tables["plain"][0]
        assert {p[0] for p in sample.pieces} == {"plain", "log_1", "log_2", "doc"}   # every heap, its last range
        assert all(any(p[0] == heap and p[3] == f"({backups.BEYOND_LAST_BLOCK},0)" for p in sample.pieces)
                   for heap in ("plain", "log_1", "log_2", "doc"))
        _, _, lo, hi = next(p for p in sample.pieces if p[0] == "plain")
        victim = conn.execute(f"SELECT id FROM {SCHEMA}.plain WHERE ctid >= %s::tid AND ctid < %s::tid LIMIT 1",
                              (lo, hi)).fetchone()[0]
        conn.execute(f"UPDATE {SCHEMA}.plain SET note = 'changed' WHERE id = %s", (victim,))
        assert backups.fingerprints(conn, SCHEMA, pieces=sample.pieces).tables["plain"] != sample.tables["plain"]
