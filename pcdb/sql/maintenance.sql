-- Queries of the monthly maintenance runbook (§8.3.1, R-OPS-3). Parameters as %(name)s;
-- identifiers are composed with psycopg.sql.Identifier by the caller ({schema}, {table}).

-- name: partition_archive_table
-- The lifecycle of each expired partition: its intent is written before each step, so a killed run is finished by the next.
CREATE TABLE IF NOT EXISTS pcdb.partition_archive (
    partition        text PRIMARY KEY,
    parent           text NOT NULL,
    state            text NOT NULL CHECK (state IN ('archiving', 'archived', 'verified', 'detaching', 'detached', 'dropped')),
    range_from       timestamptz NOT NULL,
    range_to         timestamptz NOT NULL,
    rows             bigint,
    content_checksum numeric,
    sha256           text,
    archive          text,
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    dropped_at       timestamptz,
    bytes            bigint);
-- a table made by an earlier pcdb gets the size column too (the cost review's retention saving)
ALTER TABLE pcdb.partition_archive ADD COLUMN IF NOT EXISTS bytes bigint;
-- Each life of a partition name is a generation of its own: a month re-created after its drop, or
-- changed after its proof, is archived anew beside the earlier archive, never over it.
ALTER TABLE pcdb.partition_archive ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 1

-- name: partition_archive_key
-- The key of the lifecycle table: (partition, generation); a table of an earlier pcdb keyed by the name alone is re-keyed.
DO $$
BEGIN
  IF (SELECT pg_catalog.array_length(i.indkey::int2[], 1) FROM pg_catalog.pg_index i
       WHERE i.indrelid = 'pcdb.partition_archive'::pg_catalog.regclass AND i.indisprimary) = 1 THEN
    ALTER TABLE pcdb.partition_archive DROP CONSTRAINT partition_archive_pkey,
      ADD CONSTRAINT partition_archive_pkey PRIMARY KEY (partition, generation);
  END IF;
END $$

-- name: partition_records
-- What earlier runs recorded of each partition's latest generation.
SELECT DISTINCT ON (partition) partition, state, rows, content_checksum, sha256, archive, generation
  FROM pcdb.partition_archive WHERE parent = %(parent)s ORDER BY partition, generation DESC

-- name: set_partition_state
-- Records a partition's next state (an intent before a step, a result after it).
INSERT INTO pcdb.partition_archive AS a (partition, parent, state, range_from, range_to, rows, content_checksum, sha256, archive,
                                         bytes, generation)
VALUES (%(partition)s, %(parent)s, %(state)s, %(range_from)s, %(range_to)s, %(rows)s, %(checksum)s, %(sha256)s, %(archive)s,
        pg_catalog.pg_total_relation_size(pg_catalog.to_regclass(%(qualified)s)), %(generation)s)
ON CONFLICT (partition, generation) DO UPDATE SET state = EXCLUDED.state, bytes = coalesce(EXCLUDED.bytes, a.bytes),
    rows = coalesce(EXCLUDED.rows, a.rows), content_checksum = coalesce(EXCLUDED.content_checksum, a.content_checksum),
    sha256 = coalesce(EXCLUDED.sha256, a.sha256), archive = coalesce(EXCLUDED.archive, a.archive),
    updated_at = pg_catalog.now(),
    dropped_at = CASE WHEN EXCLUDED.state = 'dropped' THEN pg_catalog.now() END

-- name: partitions
-- The partitions of a table with their bounds, and whether a concurrent detach of one was interrupted.
SELECT c.relname, pg_catalog.pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = %(parent)s::regclass
 ORDER BY c.relname

-- name: table_exists
-- Whether a table of that name exists in the schema (attached or not).
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind IN ('r', 'p'))

-- name: stale_statistics
-- Tables whose changed or dead rows passed the thresholds (plain tables and partitions).
SELECT schemaname, relname, n_live_tup, n_dead_tup, n_mod_since_analyze
  FROM pg_catalog.pg_stat_user_tables
 WHERE schemaname = ANY(%(schemas)s)
   AND ((n_mod_since_analyze >= %(min_rows)s AND n_mod_since_analyze >= %(analyze_fraction)s * greatest(n_live_tup, 1))
     OR (n_dead_tup >= %(min_rows)s AND n_dead_tup >= %(vacuum_fraction)s * greatest(n_live_tup + n_dead_tup, 1)))
 ORDER BY schemaname, relname

-- name: index_usage
-- Scans of every index of the schemas on this node, with what makes an index necessary whatever its scans.
SELECT s.schemaname, s.indexrelname, s.relname, s.idx_scan, pg_catalog.pg_relation_size(s.indexrelid),
       pg_catalog.pg_get_indexdef(s.indexrelid),
       x.indisprimary OR x.indisunique OR x.indisexclusion OR x.indisreplident
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = s.indexrelid),
       pi.relname
  FROM pg_catalog.pg_stat_user_indexes s
  JOIN pg_catalog.pg_index x ON x.indexrelid = s.indexrelid
  LEFT JOIN pg_catalog.pg_inherits ih ON ih.inhrelid = s.indexrelid
  LEFT JOIN pg_catalog.pg_class pi ON pi.oid = ih.inhparent
 WHERE s.schemaname = ANY(%(schemas)s)

-- name: stats_age_days
-- How many days the statistics of this database have been counting (since a reset, or since the schema was installed).
SELECT extract(epoch FROM pg_catalog.now() - coalesce(
         (SELECT stats_reset FROM pg_catalog.pg_stat_database WHERE datname = pg_catalog.current_database()),
         (SELECT min(applied_at) FROM pcdb.pcdb_schema_migrations))) / 86400

-- name: invalid_indexes
-- Indexes left invalid (an interrupted CREATE INDEX or REINDEX CONCURRENTLY: *_ccnew*).
SELECT n.nspname, c.relname, t.relname, pg_catalog.pg_get_indexdef(c.oid)
  FROM pg_catalog.pg_index x
  JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
  JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT x.indisvalid AND n.nspname = ANY(%(schemas)s)
 ORDER BY 1, 2

-- name: btree_bloat
-- A statistical estimate of each B-tree index's bloat (±20 %, as the ioguix queries): the pages
-- its rows need at the default fill factor from pg_stats' column widths, against its real pages.
WITH ix AS (
    SELECT n.nspname, c.relname AS index, t.relname AS table, c.relpages, c.reltuples,
           pg_catalog.pg_relation_size(c.oid) AS bytes, x.indrelid, x.indkey,
           pg_catalog.current_setting('block_size')::int AS bs
      FROM pg_catalog.pg_index x
      JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
      JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_catalog.pg_am a ON a.oid = c.relam
     WHERE a.amname = 'btree' AND x.indisvalid AND c.relpages > 1 AND n.nspname = ANY(%(schemas)s)),
width AS (
    SELECT ix.nspname, ix.index, sum(coalesce(s.avg_width, 8)) AS key_width
      FROM ix
      CROSS JOIN LATERAL pg_catalog.unnest(ix.indkey::int2[]) AS k(attnum)
      LEFT JOIN pg_catalog.pg_attribute att ON att.attrelid = ix.indrelid AND att.attnum = k.attnum
      LEFT JOIN pg_catalog.pg_stats s ON s.schemaname = ix.nspname AND s.tablename = ix.table AND s.attname = att.attname
     GROUP BY 1, 2)
SELECT ix.nspname, ix.index, ix.table, ix.bytes, ix.relpages,
       greatest(1, ceil(ix.reltuples * (8 + 4 + 8 * ceil(w.key_width / 8.0)) / ((ix.bs - 24 - 16) * 0.9))) + 1 AS expected_pages
  FROM ix JOIN width w USING (nspname, index)

-- name: statements_snapshot_table
-- Monthly snapshots of pg_stat_statements: the next month's review diffs against the last one instead of resetting.
CREATE TABLE IF NOT EXISTS pcdb.statements_snapshot (
    taken_at timestamptz NOT NULL, queryid bigint NOT NULL, query text NOT NULL,
    calls bigint NOT NULL, total_ms double precision NOT NULL, dealloc bigint NOT NULL,
    PRIMARY KEY (taken_at, queryid))

-- name: statements_now
-- The statements of this database now, with the eviction counter.
SELECT s.queryid, pg_catalog.left(s.query, 200), sum(s.calls)::bigint, sum(s.total_exec_time),
       (SELECT dealloc FROM pg_stat_statements_info)
  FROM pg_stat_statements s
 WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
   AND s.queryid IS NOT NULL
 GROUP BY s.queryid, pg_catalog.left(s.query, 200)

-- name: last_snapshot
-- The latest stored snapshot.
SELECT queryid, calls, total_ms, dealloc FROM pcdb.statements_snapshot
 WHERE taken_at = (SELECT max(taken_at) FROM pcdb.statements_snapshot)

-- name: password_ages
-- Days since each role's password was last set by pcdb (the password ledger).
SELECT role_name, extract(epoch FROM pg_catalog.now() - max(set_at)) / 86400
  FROM pcdb.pcdb_password_history GROUP BY role_name

-- name: login_roles
-- Roles that can log in or are superusers, apart from PostgreSQL's and Azure's own.
SELECT rolname, rolsuper, rolcanlogin FROM pg_catalog.pg_roles
 WHERE rolname !~ '^(pg_|azure_)' AND (rolcanlogin OR rolsuper)
 ORDER BY rolname

-- name: unvalidated_constraints
-- Constraints added NOT VALID and never validated.
SELECT n.nspname, c.relname, k.conname
  FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT k.convalidated AND n.nspname = ANY(%(schemas)s)

-- name: detach_pending
-- Whether a partition's DETACH CONCURRENTLY was interrupted.
SELECT inhdetachpending FROM pg_catalog.pg_inherits WHERE inhrelid = %s::regclass

-- name: partition_bounds_as_timestamps
-- Two bound literals of a partition, as timestamps.
SELECT %s::timestamptz, %s::timestamptz

-- name: archive_table_exists
-- Whether the partition archive's record table exists.
SELECT to_regclass('pcdb.partition_archive') IS NOT NULL

-- name: statements_snapshot_exists
-- Whether the statement snapshots table exists.
SELECT to_regclass('pcdb.statements_snapshot') IS NOT NULL

-- name: insert_statement_snapshot
-- One statement's counters at this run.
INSERT INTO pcdb.statements_snapshot VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING

-- name: password_history_exists
-- Whether the password history table exists.
SELECT to_regclass('pcdb.pcdb_password_history') IS NOT NULL

-- name: archive_record
-- An archived partition's state, archive and rows (its latest generation).
SELECT state, archive, rows FROM pcdb.partition_archive WHERE partition = %s ORDER BY generation DESC LIMIT 1

-- name: index_valid
-- Whether an index (schema, name) is valid.
SELECT x.indisvalid
  FROM pg_catalog.pg_index x
  JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = %s AND c.relname = %s

-- name: archived_range
-- The range an archived partition held.
SELECT range_from, range_to FROM pcdb.partition_archive WHERE partition = %s ORDER BY generation DESC LIMIT 1

-- name: retention_freed
-- What the partitions dropped by the retention in the last 12 months took (the cost review's saving).
SELECT coalesce(sum(bytes), 0)::bigint, count(*) FROM pcdb.partition_archive
 WHERE state = 'dropped' AND dropped_at >= pg_catalog.now() - interval '12 months'
