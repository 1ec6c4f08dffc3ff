-- Data-corruption recovery (pcdb/recovery.py). {table}, {key}, {columns}, {where}... are composed
-- with psycopg.sql (identifiers quoted; {where} is the operator's own predicate, checked first).

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

-- name: lock_rows_in_range
-- The same, with the live rows locked until the replay commits.
SELECT pg_catalog.json_build_array({key})::text, pg_catalog.row_to_json(t)::text FROM {table} AS t WHERE {where}
FOR UPDATE;

-- name: check_where
-- The operator's predicate is valid SQL on this table (planned, not run).
EXPLAIN SELECT 1 FROM {table} AS t WHERE {where};

-- name: put_back
-- The restored rows, inserted where they are missing and written over where they differ.
INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE
SELECT {columns} FROM pg_catalog.json_populate_recordset(NULL::{table}, %(rows)s::json)
ON CONFLICT ({key}) DO UPDATE SET ({columns}) = ROW({excluded});
