-- Queries the sandbox engine runs against its own servers (operations SQL, schema-qualified).

-- name: server_version
-- The version the server answering runs ("15.14"), as it says itself (without a packager's suffix).
SELECT pg_catalog.split_part(pg_catalog.current_setting('server_version'), ' ', 1);

-- name: node_state
-- Role and timeline of the server answering: in recovery or not, and the timeline it is on.
SELECT pg_catalog.pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_catalog.pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()))
            ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END AS timeline;

-- name: replication
-- Every standby streaming from this primary, with its sync state and replay lag.
SELECT application_name, state, sync_state,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,
       extract(epoch FROM replay_lag)::float8 AS lag_seconds
  FROM pg_catalog.pg_stat_replication
 ORDER BY application_name;

-- name: synchronous_names
-- The primary's running synchronous_standby_names (its configuration, not who is connected now).
SELECT pg_catalog.current_setting('synchronous_standby_names');

-- name: standby_view
-- A standby's own view: in recovery, its WAL receiver's state, what it received and replayed.
SELECT pg_catalog.pg_is_in_recovery(), (SELECT status FROM pg_catalog.pg_stat_wal_receiver),
       pg_catalog.pg_last_wal_receive_lsn()::text, pg_catalog.pg_last_wal_replay_lsn()::text;

-- name: recovery_point
-- How far a node in recovery has gone: the furthest WAL it received or replayed.
SELECT CASE WHEN pg_catalog.pg_wal_lsn_diff(coalesce(pg_catalog.pg_last_wal_receive_lsn(), '0/0'),
                                            coalesce(pg_catalog.pg_last_wal_replay_lsn(), '0/0')) > 0
            THEN pg_catalog.pg_last_wal_receive_lsn() ELSE pg_catalog.pg_last_wal_replay_lsn() END::text;

-- name: database_exists
-- Whether a database of that name exists.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %(name)s) AS present;

-- name: role_exists
-- Whether a role of that name exists.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(name)s) AS present;

-- name: settings
-- Current and pending values of the named parameters.
SELECT name, setting, unit, context, pending_restart
  FROM pg_catalog.pg_settings
 WHERE name = ANY(%(names)s);

-- name: force_commit
-- A transaction with an xid writes a commit record: PITR needs one after its target time.
SELECT pg_catalog.txid_current() AS xid;

-- name: switch_wal
-- Closes the current WAL segment (run after force_commit, in its own transaction, so the commit is inside it).
SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal()) AS walfile;

-- name: archiver
-- The archiver's progress.
SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time
  FROM pg_catalog.pg_stat_archiver;

-- name: metrics
-- One sample of the counters the health and capacity runbooks use.
SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend') AS connections,
       (SELECT sum(pg_catalog.pg_database_size(datname))::bigint FROM pg_catalog.pg_database) AS storage_used_bytes,
       sum(xact_commit + xact_rollback)::bigint AS transactions,
       sum(blks_hit)::bigint AS blks_hit,
       sum(blks_read)::bigint AS blks_read,
       sum(deadlocks)::bigint AS deadlocks
  FROM pg_catalog.pg_stat_database;

-- name: wal_segment_size
-- The server's WAL segment size in bytes (unit B since PostgreSQL 11).
SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size';

-- name: auto_conf_settings
-- The parameters ALTER SYSTEM has written (postgresql.auto.conf: pcdb's from the spec), with what each
-- would be without them: the value of the other configuration files, else the built-in default.
SELECT a.name,
       (SELECT f.setting FROM pg_catalog.pg_file_settings f
         WHERE f.name = a.name AND f.sourcefile NOT LIKE '%%/postgresql.auto.conf' AND f.error IS NULL
         ORDER BY f.seqno DESC LIMIT 1) AS file_value,
       s.boot_val
  FROM (SELECT DISTINCT name FROM pg_catalog.pg_file_settings WHERE sourcefile LIKE '%%/postgresql.auto.conf') a
  LEFT JOIN pg_catalog.pg_settings s ON s.name = a.name;

-- name: storage
-- What the databases take on this server, whether it is read-only by default, and whether the storage guard set that.
SELECT (SELECT sum(pg_catalog.pg_database_size(datname))::bigint FROM pg_catalog.pg_database) AS used_bytes,
       pg_catalog.current_setting('default_transaction_read_only')::bool AS read_only,
       EXISTS (SELECT 1 FROM pg_catalog.pg_file_settings WHERE name = 'default_transaction_read_only'
                 AND sourcefile LIKE '%/postgresql.auto.conf') AS guard_set

-- name: pending_restart
-- Whether a changed parameter waits for a restart.
SELECT bool_or(pending_restart) FROM pg_catalog.pg_settings
