-- Data-corruption recovery (pcdb/recovery.py). {table}, {key}, {columns}, {where}... are composed
-- with psycopg.sql (identifiers quoted; {where} is the tree pcdb/predicate.py checked against its
-- allow-list and printed again, never the operator's text).

-- name: resolve_table
-- A table's shown name, schema and name, or no row when it does not exist (tables and partitioned tables only).
SELECT c.oid::pg_catalog.regclass::text, n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%(name)s) AND c.relkind IN ('r', 'p');

-- name: user_tables
-- Every table of the service's own schemas (partitions are compared through their root).
SELECT c.oid::pg_catalog.regclass::text, n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pcdb') AND n.nspname NOT LIKE 'pg\_%%'
ORDER BY 1;

-- name: primary_key
-- The primary key's columns, in key order (none: the table cannot be compared row by row).
SELECT a.attname FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %(table)s::pg_catalog.regclass AND i.indisprimary
ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum);

-- name: writable_columns
-- The columns a row is put back with (generated columns are computed by the server).
SELECT a.attname FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %(table)s::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum;

-- name: rows_in_range
-- Every row of the range, keyed by its primary key, as JSON text (compared byte for byte).
SELECT pg_catalog.json_build_array({key})::text, pg_catalog.row_to_json(t)::text FROM {table} AS t WHERE {where};

-- name: lock_rows_by_key
-- The live rows of the keys to put back, locked until the replay commits (by key, not by the predicate).
SELECT pg_catalog.json_build_array({key})::text, pg_catalog.row_to_json(t)::text FROM {table} AS t
WHERE ({key}) IN (SELECT {key} FROM pg_catalog.json_populate_recordset(NULL::{table}, %(keys)s::json))
FOR UPDATE;

-- name: check_where
-- The checked predicate plans on this table (EXPLAIN: planned, not run).
EXPLAIN SELECT 1 FROM {table} AS t WHERE {where};

-- name: all_columns
-- A table's column names (what a predicate may read).
SELECT a.attname FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %(table)s::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped;

-- name: read_only
-- A read of the recovery: nothing it runs can write.
SET TRANSACTION READ ONLY;

-- name: guard
-- Every statement of the transaction is bounded, and resolves names in pg_catalog only.
SELECT pg_catalog.set_config('statement_timeout', %(timeout)s::text, true),
       pg_catalog.set_config('search_path', 'pg_catalog', true);

-- name: role_exists
-- Whether the recovery's role exists.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s);

-- name: create_role
-- The recovery's role: no login, no attribute beyond the table rights it is given.
CREATE ROLE {role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;

-- name: grant_role
-- The admin may take the role on (SET ROLE).
GRANT {role} TO {admin};

-- name: grant_table
-- What the recovery needs of one compared table: read it, put rows back.
GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT, INSERT, UPDATE ON {table} TO {role};

-- name: put_back
-- The restored rows, inserted where they are missing and written over where they differ.
INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE
SELECT {columns} FROM pg_catalog.json_populate_recordset(NULL::{table}, %(rows)s::json)
ON CONFLICT ({key}) DO UPDATE SET ({columns}) = ROW({excluded});
