-- DR drill statements ({table} is composed with psycopg.sql.Identifier by pcdb/drills.py).

-- name: create_known_rows
-- The table of known rows the corruption drill restores.
CREATE TABLE {table} (id int PRIMARY KEY, payload text NOT NULL);

-- name: insert_known_rows
-- Rows whose content can be checked: payload = md5(id).
INSERT INTO {table} SELECT g, md5(g::text) FROM pg_catalog.generate_series(1, %(rows)s) AS g;

-- name: corrupt_delete
-- The simulated application bug, part 1: a third of the rows deleted (run without parameters).
DELETE FROM {table} WHERE id % 3 = 0;

-- name: corrupt_update
-- The simulated application bug, part 2: a third of the rows overwritten (run without parameters).
UPDATE {table} SET payload = 'corrupted' WHERE id % 3 = 1;

-- name: count_intact
-- Rows present, and rows with their original content.
SELECT count(*), count(*) FILTER (WHERE payload = md5(id::text)) FROM {table};

-- name: table_exists
-- Whether a leftover table exists.
SELECT pg_catalog.to_regclass(%(name)s) IS NOT NULL;

-- name: drop_table
-- Removes a drill table.
DROP TABLE IF EXISTS {table};

-- name: current_lsn
-- The primary's current WAL position (the region drill's lag check).
SELECT pg_catalog.pg_current_wal_lsn();

-- name: replay_lag_bytes
-- How far the replica's replay is behind a primary LSN, in bytes.
SELECT pg_catalog.pg_wal_lsn_diff(%(lsn)s, pg_catalog.pg_last_wal_replay_lsn());
