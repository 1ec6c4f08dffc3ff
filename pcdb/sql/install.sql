-- Queries of the install runbook (schema, security, verification). Parameters as %(name)s;
-- identifiers are composed with psycopg.sql.Identifier by the caller ({schema}, {table}, {role}).

-- name: create_migrations_table
-- The ledger of applied schema migrations (version, file name, checksum).
CREATE TABLE IF NOT EXISTS {schema}.pcdb_schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now());

-- name: applied_migrations
-- Versions already applied, with the checksum they had.
SELECT version, name, checksum FROM {schema}.pcdb_schema_migrations ORDER BY version;

-- name: record_migration
-- Marks a migration applied.
INSERT INTO {schema}.pcdb_schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: migration_lock
-- Serialises concurrent installs on the same database for the rest of the transaction.
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pcdb-schema-migrations'));

-- name: existing_partitions
-- Partitions of a partitioned table, by name.
SELECT c.relname
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
  JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
  JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
 WHERE n.nspname = %(schema)s AND p.relname = %(table)s;

-- name: create_partition_table
-- A monthly partition's table, not attached yet (its columns, defaults and checks are the log's).
CREATE TABLE IF NOT EXISTS {schema}.{partition} (LIKE {schema}.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);

-- name: attach_partition
-- Attaches it for its month (DDL takes no bind parameters: bounds are literals; indexes follow the log's).
ALTER TABLE {schema}.{table} ATTACH PARTITION {schema}.{partition} FOR VALUES FROM ({start}) TO ({end});

-- name: role_attributes
-- The attributes of a role that the spec controls.
SELECT rolcanlogin, rolconnlimit, rolcreatedb, rolcreaterole, rolinherit, rolsuper, rolreplication, rolbypassrls
  FROM pg_catalog.pg_roles WHERE rolname = %(role)s;

-- name: role_inventory
-- Every role but PostgreSQL's predefined ones (and Azure's azure_*), with what makes it powerful and what it is a member of.
SELECT r.rolname, r.rolsuper, r.rolcanlogin, r.rolcreaterole, r.rolreplication, r.rolbypassrls,
       COALESCE(array_agg(g.rolname ORDER BY g.rolname) FILTER (WHERE g.rolname IS NOT NULL), '{}') AS member_of
  FROM pg_catalog.pg_roles r
  LEFT JOIN pg_catalog.pg_auth_members m ON m.member = r.oid
  LEFT JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
 WHERE r.rolname !~ '^(pg_|azure_)'
 GROUP BY 1, 2, 3, 4, 5, 6
 ORDER BY 1;

-- name: schema_tables
-- Ordinary and partitioned tables of the schema (not partitions).
SELECT c.relname
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
 ORDER BY c.relname;

-- name: table_grants
-- Privileges granted directly to each role on the schema's tables (partitions excluded).
SELECT c.relname, g.rolname, a.privilege_type
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
  JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND g.rolname = ANY(%(roles)s);

-- name: sequence_grants
-- Privileges granted directly to each role on the schema's sequences.
SELECT c.relname, g.rolname, a.privilege_type
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
  JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
 WHERE n.nspname = %(schema)s AND c.relkind = 'S' AND g.rolname = ANY(%(roles)s);

-- name: schema_sequences
-- Sequences of the schema.
SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind = 'S' ORDER BY c.relname;

-- name: database_grants
-- Privileges granted directly on the database.
SELECT g.rolname, a.privilege_type
  FROM pg_catalog.pg_database d CROSS JOIN LATERAL pg_catalog.aclexplode(d.datacl) a
  JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
 WHERE d.datname = %(database)s AND g.rolname = ANY(%(roles)s);

-- name: public_database_grants
-- What every role gets on the database through PUBLIC (the default ACL when none was set: CONNECT, TEMPORARY).
SELECT a.privilege_type
  FROM pg_catalog.pg_database d
 CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a
 WHERE d.datname = %(database)s AND a.grantee = 0;

-- name: schema_grants
-- Privileges granted directly on the schema.
SELECT g.rolname, a.privilege_type
  FROM pg_catalog.pg_namespace n CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) a
  JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
 WHERE n.nspname = %(schema)s AND g.rolname = ANY(%(roles)s);

-- name: default_privileges
-- Default privileges in the schema for objects created by the owner (object type r=tables, S=sequences).
SELECT d.defaclobjtype, g.rolname, a.privilege_type
  FROM pg_catalog.pg_default_acl d
  JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
  JOIN pg_catalog.pg_roles o ON o.oid = d.defaclrole
  CROSS JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) a
  JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
 WHERE n.nspname = %(schema)s AND o.rolname = %(owner)s AND g.rolname = ANY(%(roles)s);

-- name: password_ledger
-- When each role's password was last set (the 90-day expiry is tracked here, R-SEC-3).
CREATE TABLE IF NOT EXISTS {schema}.pcdb_password_ledger (
    role_name text PRIMARY KEY, set_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);

-- name: record_password
-- Records that a role's password was set now.
INSERT INTO {schema}.pcdb_password_ledger (role_name, set_at, expires_at)
VALUES (%(role)s, pg_catalog.now(), pg_catalog.now() + %(expiry)s)
ON CONFLICT (role_name) DO UPDATE SET set_at = EXCLUDED.set_at, expires_at = EXCLUDED.expires_at;

-- name: password_expiry
-- Recorded password expiry per role.
SELECT role_name, set_at, expires_at FROM {schema}.pcdb_password_ledger ORDER BY role_name;

-- name: password_history_table
-- The SCRAM verifiers of the passwords each role had (the §4.3.2 history rule: no reuse of the last N).
CREATE TABLE IF NOT EXISTS {schema}.pcdb_password_history (
    role_name text NOT NULL, verifier text NOT NULL, set_at timestamptz NOT NULL DEFAULT pg_catalog.now());

-- name: recent_passwords
-- The last N verifiers of a role, newest first.
SELECT verifier FROM {schema}.pcdb_password_history WHERE role_name = %(role)s ORDER BY set_at DESC LIMIT %(n)s;

-- name: record_password_history
-- Remembers the verifier of a password just set.
INSERT INTO {schema}.pcdb_password_history (role_name, verifier) VALUES (%(role)s, %(verifier)s);

-- name: database_bytes
-- What every database of the server takes on disk.
SELECT coalesce(sum(pg_catalog.pg_database_size(datname)), 0)::bigint FROM pg_catalog.pg_database

-- name: delete_old_pitr_markers
-- Markers an earlier PITR check left behind.
DELETE FROM pcdb.pitr_marker WHERE marker LIKE 'pitr-%'

-- name: insert_pitr_marker
-- A marker, committed at the clock's time.
INSERT INTO pcdb.pitr_marker VALUES (%s, clock_timestamp())

-- name: delete_pitr_markers
-- The markers of one PITR check.
DELETE FROM pcdb.pitr_marker WHERE marker LIKE %s

-- name: create_pitr_marker
-- Phase 7's PITR marker table (pcdb's own schema).
CREATE TABLE IF NOT EXISTS pcdb.pitr_marker (marker text PRIMARY KEY, at timestamptz)

-- name: pitr_marker_exists
-- Whether Phase 7's PITR marker table exists.
SELECT pg_catalog.to_regclass('pcdb.pitr_marker') IS NOT NULL

-- name: first_column
-- A table's first live column (the probe statements name it).
SELECT a.attname
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
  ORDER BY a.attnum LIMIT 1

-- name: pitr_markers
-- The markers of one PITR check, in order.
SELECT marker FROM pcdb.pitr_marker WHERE marker LIKE %s ORDER BY marker

-- name: create_pg_stat_statements
-- Phase 6: the statement statistics (R-PAR-1).
CREATE EXTENSION IF NOT EXISTS pg_stat_statements

-- name: create_temp_probe
-- A temporary table: every role may create one in its session.
CREATE TEMP TABLE pcdb_probe_temp (id int)
