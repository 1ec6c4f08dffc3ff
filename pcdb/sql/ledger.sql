-- The run ledger: one append-only, hash-chained evidence row per runbook run, in pcdb's own
-- schema on the managed server ({schema} is composed with psycopg.sql.Identifier).

-- name: create_ledger
-- The table; each row carries the hash of the row before (prev_hash) and its own (row_hash).
CREATE TABLE IF NOT EXISTS {schema}.run_ledger (
    seq bigint PRIMARY KEY,
    recorded_at timestamptz NOT NULL,
    run_id text NOT NULL,
    flow text NOT NULL,
    deployment text,
    environment text NOT NULL,
    parameters jsonb NOT NULL,
    triggered_by text NOT NULL,
    started_at timestamptz,
    ended_at timestamptz,
    state text NOT NULL,
    figures jsonb NOT NULL,
    report_path text,
    report_sha256 text,
    report_archive text,
    prev_hash text NOT NULL,
    row_hash text NOT NULL UNIQUE);

-- name: add_version_2_columns
-- Hash version 2 (the JSON columns hashed as jsonb text) and the run's signed decisions. Rows of an
-- earlier pcdb keep version 1; adding the columns rewrites no row.
ALTER TABLE {schema}.run_ledger
    ADD COLUMN IF NOT EXISTS hash_version smallint NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS decisions jsonb NOT NULL DEFAULT '[]'::jsonb;

-- name: has_decisions
-- Whether the ledger already has the columns of hash version 2.
SELECT EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = %(schema)s AND table_name = 'run_ledger' AND column_name = 'decisions');

-- name: canonical_json
-- The text PostgreSQL gives back for the JSON columns: what a row's hash is taken over.
SELECT %(parameters)s::jsonb::text, %(figures)s::jsonb::text, %(decisions)s::jsonb::text;

-- name: create_append_only_guard
-- UPDATE, DELETE and TRUNCATE are refused; an owner who disables this is caught by the chain.
CREATE OR REPLACE FUNCTION {schema}.run_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'run_ledger is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

-- name: guard_rows
-- The row-level guard.
CREATE OR REPLACE TRIGGER run_ledger_no_change BEFORE UPDATE OR DELETE ON {schema}.run_ledger
FOR EACH ROW EXECUTE FUNCTION {schema}.run_ledger_append_only();

-- name: guard_truncate
-- The statement-level guard against TRUNCATE.
CREATE OR REPLACE TRIGGER run_ledger_no_truncate BEFORE TRUNCATE ON {schema}.run_ledger
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.run_ledger_append_only();

-- name: lock_ledger
-- One appender at a time: the last hash must not change between reading it and appending.
LOCK TABLE {schema}.run_ledger IN SHARE ROW EXCLUSIVE MODE;

-- name: last_row
-- The chain's head.
SELECT seq, row_hash FROM {schema}.run_ledger ORDER BY seq DESC LIMIT 1;

-- name: append
-- One evidence row.
INSERT INTO {schema}.run_ledger (seq, recorded_at, run_id, flow, deployment, environment, parameters,
    triggered_by, started_at, ended_at, state, figures, report_path, report_sha256, report_archive,
    prev_hash, row_hash, decisions, hash_version)
VALUES (%(seq)s, %(recorded_at)s, %(run_id)s, %(flow)s, %(deployment)s, %(environment)s, %(parameters)s,
    %(triggered_by)s, %(started_at)s, %(ended_at)s, %(state)s, %(figures)s, %(report_path)s,
    %(report_sha256)s, %(report_archive)s, %(prev_hash)s, %(row_hash)s, %(decisions)s, %(hash_version)s);

-- name: all_rows_for_verify
-- The whole chain in order, the JSON columns as the database's text (what the hash covers). A ledger
-- of an earlier pcdb, without the version-2 columns, reads as version 1 with no decisions.
SELECT seq, recorded_at, run_id, flow, deployment, environment, triggered_by, started_at, ended_at, state,
       report_path, report_sha256, report_archive, prev_hash, row_hash,
       COALESCE((pg_catalog.to_jsonb(l) ->> 'hash_version')::int, 1),
       parameters::text, figures::text, COALESCE(pg_catalog.to_jsonb(l) -> 'decisions', '[]'::jsonb)::text
  FROM {schema}.run_ledger l ORDER BY seq;

-- name: row_for_verify
-- One row as verification reads it (the append checks the row it just wrote).
SELECT seq, recorded_at, run_id, flow, deployment, environment, triggered_by, started_at, ended_at, state,
       report_path, report_sha256, report_archive, prev_hash, row_hash,
       COALESCE((pg_catalog.to_jsonb(l) ->> 'hash_version')::int, 1),
       parameters::text, figures::text, COALESCE(pg_catalog.to_jsonb(l) -> 'decisions', '[]'::jsonb)::text
  FROM {schema}.run_ledger l WHERE seq = %(seq)s;

-- name: rows_since
-- Rows recorded since a time, optionally of one flow, newest first.
SELECT seq, recorded_at, run_id, flow, deployment, environment, parameters, triggered_by, started_at,
       ended_at, state, figures, report_path, report_sha256, report_archive, prev_hash, row_hash,
       COALESCE(pg_catalog.to_jsonb(l) -> 'decisions', '[]'::jsonb),
       COALESCE((pg_catalog.to_jsonb(l) ->> 'hash_version')::int, 1)
  FROM {schema}.run_ledger l
 WHERE recorded_at >= %(since)s AND (%(flow)s::text IS NULL OR flow = %(flow)s)
 ORDER BY seq DESC;

-- name: ledger_exists
-- Whether the ledger was created on this server.
SELECT pg_catalog.to_regclass(%(name)s) IS NOT NULL;

-- name: row_of_run
-- The newest row of one flow run.
SELECT seq, recorded_at, run_id, flow, deployment, environment, parameters, triggered_by, started_at,
       ended_at, state, figures, report_path, report_sha256, report_archive, prev_hash, row_hash,
       COALESCE(pg_catalog.to_jsonb(l) -> 'decisions', '[]'::jsonb),
       COALESCE((pg_catalog.to_jsonb(l) ->> 'hash_version')::int, 1)
  FROM {schema}.run_ledger l WHERE run_id = %(run_id)s ORDER BY seq DESC LIMIT 1;
