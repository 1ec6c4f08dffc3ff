-- The major version upgrade's prechecks and its after-steps (#27). Each precheck reads only.

-- name: server_major
-- The major the server answering runs (server_version_num 140023 -> 14).
SELECT pg_catalog.current_setting('server_version_num')::int / 10000;

-- name: installed_extensions
-- Extensions installed in the database answering, with their versions.
SELECT extname, extversion FROM pg_catalog.pg_extension ORDER BY extname;

-- name: reg_columns
-- Columns of user tables with a reg* type pg_upgrade cannot carry over (their OIDs change in the
-- new cluster); regclass, regrole and regtype are carried over and are not listed.
SELECT n.nspname || '.' || c.relname || '.' || a.attname AS col, t.typname
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'm', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND t.typname IN ('regcollation', 'regconfig', 'regdictionary', 'regnamespace', 'regoper', 'regoperator',
                    'regproc', 'regprocedure')
ORDER BY 1;

-- name: prepared_transactions
-- Prepared transactions waiting for COMMIT PREPARED or ROLLBACK PREPARED (pg_upgrade refuses them).
SELECT gid, owner, database, prepared FROM pg_catalog.pg_prepared_xacts ORDER BY prepared;

-- name: logical_slots
-- Logical replication slots: Azure's major version upgrade refuses a server that has one, and
-- pg_upgrade before 17 does not carry them over.
SELECT slot_name, plugin, database FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' ORDER BY slot_name;

-- name: databases_size
-- Bytes of every database: what a copy-mode pg_upgrade writes a second time.
SELECT coalesce(sum(pg_catalog.pg_database_size(oid)), 0)::bigint FROM pg_catalog.pg_database WHERE datallowconn;

-- name: analyze
-- After pg_upgrade the planner has no statistics (pg_upgrade does not carry them): gather them.
ANALYZE;

-- name: outdated_extensions
-- Extensions whose installed version is not the new major's default (pg_upgrade keeps the old one).
SELECT e.extname, e.extversion, a.default_version
FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_available_extensions a ON a.name = e.extname
WHERE a.default_version IS DISTINCT FROM e.extversion ORDER BY e.extname;

-- name: update_extension
-- One extension to the new major's default version (the name is an Identifier).
ALTER EXTENSION {} UPDATE;
