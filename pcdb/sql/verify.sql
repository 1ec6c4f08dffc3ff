-- Phase 7 verification probes (§10.1). Run inside transactions that are rolled back, so the
-- sample rows never stay.

-- name: schema_present
-- §10.1.1 (2): the service schema exists.
SELECT schema_name FROM information_schema.schemata WHERE schema_name = %(schema)s;

-- name: tables_present
-- §10.1.1 (3): the tables of the schema.
SELECT table_name FROM information_schema.tables WHERE table_schema = %(schema)s ORDER BY table_name;

-- name: indexes_present
-- §10.1.1 (4): the indexes of the schema with their tables.
SELECT indexname, tablename FROM pg_catalog.pg_indexes WHERE schemaname = %(schema)s ORDER BY tablename, indexname;

-- name: circuit_breakers
-- §10.1.1 (5): the circuit-breaker seed rows.
SELECT service_name, state FROM {schema}.pc_circuit_breaker_state ORDER BY service_name;

-- name: sample_inserts
-- §10.1.2 (1): the document's three sample rows.
INSERT INTO {schema}.pc_product_change_history (line_number, customer_id, current_product_code, target_product_code, process_status)
VALUES ('010-1234-5678', 'CUST001', 'PLAN_A', 'PLAN_B', 'REQUESTED'),
       ('010-2345-6789', 'CUST002', 'PLAN_B', 'PLAN_C', 'COMPLETED'),
       ('010-3456-7890', 'CUST003', 'PLAN_C', 'PLAN_A', 'FAILED');

-- name: filler_rows
-- Production-like volume for the planner (rolled back with the samples).
INSERT INTO {schema}.pc_product_change_history (line_number, customer_id, current_product_code, target_product_code, process_status, requested_at)
SELECT '010-' || lpad((g %% 10000)::text, 4, '0') || '-' || lpad(g::text, 4, '0'), 'CUST' || (g %% 5000),
       'PLAN_A', 'PLAN_B', (ARRAY['REQUESTED', 'PROCESSING', 'COMPLETED', 'FAILED'])[1 + g %% 4],
       pg_catalog.now() - g * interval '1 minute'
  FROM pg_catalog.generate_series(1, %(rows)s) AS g;

-- name: explain_line_lookup
-- §10.1.2 (2): the lookup the first index serves.
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT * FROM {schema}.pc_product_change_history WHERE line_number = '010-1234-5678' AND process_status = 'REQUESTED';

-- name: top_statements
-- §10.1.2 (3): pg_stat_statements is readable.
SELECT query, calls, mean_exec_time, total_exec_time FROM public.pg_stat_statements ORDER BY mean_exec_time DESC LIMIT 5;

-- name: tls_of_this_session
-- The TLS version and cipher of the current connection.
SELECT ssl, version, cipher FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid();

-- name: table_fingerprints
-- The tables a fingerprint is reported for: every table of the schema that is not a partition
-- (a partitioned table's rows are counted under it, an empty one is still listed).
SELECT c.relname AS table_name
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
 ORDER BY c.relname;

-- name: fingerprint_units
-- Every heap of the schema's tables (a partition counted under its root), with its size in
-- blocks: the restore test fingerprints block ranges of them side by side.
SELECT c.relname AS heap, r.relname AS root,
       (pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::int)::bigint AS blocks
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_class r ON r.oid = coalesce(pg_catalog.pg_partition_root(c.oid), c.oid)   -- NULL: not a partition
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
 WHERE rn.nspname = %(schema)s AND n.nspname = %(schema)s AND c.relkind = 'r'
 ORDER BY blocks DESC, c.relname;

-- name: fingerprint_of_blocks
-- Rows and the sum of their 64-bit hashes in the blocks from lo up to hi (TIDs '(n,0)') of one heap
-- ({schema}.{table}); a TID range scan. hash_record_extended hashes the row's values as they are
-- stored, without making text of them; the sums add up across ranges, heaps and connections.
SELECT count(*) AS row_count, coalesce(sum(pg_catalog.hash_record_extended(t, 0)), 0) AS checksum
  FROM {schema}.{table} AS t
 WHERE t.ctid >= %(lo)s::tid AND t.ctid < %(hi)s::tid;

-- name: fingerprint_of_blocks_as_text
-- The same, for a heap with a column type that has no extended hash (json, point, ...): the first
-- 64 bits of the md5 of each row's text.
SELECT count(*) AS row_count,
       coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0) AS checksum
  FROM {schema}.{table} AS t
 WHERE t.ctid >= %(lo)s::tid AND t.ctid < %(hi)s::tid;

-- name: export_snapshot
-- This transaction's snapshot, for the restore test's other connections to read the same moment.
SELECT pg_catalog.pg_export_snapshot();

-- name: import_snapshot
-- Read the moment another transaction exported ({snapshot}: its identifier, quoted).
SET TRANSACTION SNAPSHOT {snapshot};

-- name: schema_objects
-- Tables, indexes and sequences of the schema, by kind.
SELECT c.relkind::text AS kind, c.relname AS name
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'i', 'I', 'S')
 ORDER BY 1, 2;

-- name: login_roles
-- Roles that are not built in.
SELECT rolname FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' ORDER BY 1;

-- name: amcheck_indexes
-- Every btree index checked (its structure; with heapallindexed, against its table too).
SELECT c.relname AS index_name, e.message
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_am a ON a.oid = c.relam AND a.amname = 'btree'
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL (SELECT NULL::text AS message FROM public.bt_index_check(i.indexrelid, %(heapallindexed)s)) e
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relpersistence = 'p' AND i.indisvalid
   AND c.relkind = 'i' AND e.message IS NOT NULL;

-- name: amcheck_tables
-- Every table's heap checked (verify_heapam): one row per corruption found.
SELECT c.relname AS table_name, v.blkno, v.msg
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL public.verify_heapam(c.oid) v
 WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema');

-- name: create_restore_marker
-- The restore test's marker table (pcdb's own schema).
CREATE TABLE IF NOT EXISTS pcdb.restore_marker (marker text PRIMARY KEY, at timestamptz NOT NULL)

-- name: insert_restore_marker
-- A marker committed just before the restore point.
INSERT INTO pcdb.restore_marker VALUES (%s, clock_timestamp())

-- name: count_restore_marker
-- Whether the restored server has the marker.
SELECT count(*) FROM pcdb.restore_marker WHERE marker = %s

-- name: create_amcheck
-- amcheck on the restored server (a throw-away copy).
CREATE EXTENSION IF NOT EXISTS amcheck

-- name: create_pcdb_schema
-- pcdb's own schema, for its markers.
CREATE SCHEMA IF NOT EXISTS pcdb

-- name: database_size
-- The restored database's size in bytes (the restore test's throughput).
SELECT pg_catalog.pg_database_size(pg_catalog.current_database());
