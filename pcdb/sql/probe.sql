-- The probe table of drills and failover tests (created and dropped by pcdb/probe.py).

-- name: create_probe_table
-- One row per probe write; the id is the writer's own counter.
CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp());

-- name: drop_probe_table
-- Removes the probe table.
DROP TABLE IF EXISTS {table};

-- name: insert_probe_row
-- Writes one numbered row.
INSERT INTO {table} (id) VALUES (%(id)s);

-- name: probe_ids
-- Every id present.
SELECT id FROM {table};
