-- Probes of the health runbook (§6, R-MON-1..3): one round trip each, read only.

-- name: instant
-- What is true right now on the primary: sessions, ages, slots, invalid indexes, sequences.
SELECT
  (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend') AS active_connections,
  (SELECT pg_catalog.current_setting('max_connections')::int) AS max_connections,
  (SELECT max(pg_catalog.age(datfrozenxid)) FROM pg_catalog.pg_database WHERE datallowconn) AS xid_age,
  (SELECT coalesce(max(extract(epoch FROM pg_catalog.now() - xact_start)), 0) FROM pg_catalog.pg_stat_activity
    WHERE xact_start IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid())
    AS longest_transaction_seconds,
  (SELECT coalesce(max(extract(epoch FROM pg_catalog.now() - state_change)), 0) FROM pg_catalog.pg_stat_activity
    WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')) AS idle_in_transaction_seconds,
  (SELECT coalesce(max(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)), 0)
     FROM pg_catalog.pg_replication_slots WHERE restart_lsn IS NOT NULL) AS slot_retained_bytes,
  (SELECT count(*) FROM pg_catalog.pg_index WHERE NOT indisvalid) AS invalid_indexes,
  (SELECT coalesce(max(100.0 * (last_value - min_value) / nullif(max_value - min_value, 0)), 0)
     FROM pg_catalog.pg_sequences WHERE last_value IS NOT NULL) AS sequence_used_percent,
  (SELECT sum(pg_catalog.pg_database_size(datname))::bigint FROM pg_catalog.pg_database) AS database_bytes,
  (CASE WHEN pg_catalog.pg_is_in_recovery() THEN 0 ELSE 1 END) AS writable_primary,
  (CASE WHEN pg_catalog.current_setting('default_transaction_read_only') = 'on'
         OR pg_catalog.pg_is_in_recovery() THEN 1 ELSE 0 END) AS primary_read_only

-- name: counters
-- Cumulative counters; the runbook turns two readings into rates.
SELECT (SELECT sum(xact_commit + xact_rollback) FROM pg_catalog.pg_stat_database) AS transactions,
       (SELECT sum(deadlocks) FROM pg_catalog.pg_stat_database) AS deadlocks,
       (SELECT sum(blks_hit) FROM pg_catalog.pg_stat_database) AS blks_hit,
       (SELECT sum(blks_read) FROM pg_catalog.pg_stat_database) AS blks_read

-- name: statement_counters
-- pg_stat_statements of this database: calls and time in all, and calls of statements slower than the threshold on average.
SELECT coalesce(sum(calls), 0)::float8 AS calls, coalesce(sum(total_exec_time), 0)::float8 AS total_ms,
       coalesce(sum(calls) FILTER (WHERE mean_exec_time >= %(slow_ms)s), 0)::float8 AS slow_calls
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())

-- name: business
-- §6.1.3 over the window: product-change success, KOS integration success, processing time (completion - request).
SELECT
  (SELECT 100.0 * count(*) FILTER (WHERE process_status = 'COMPLETED')
            / nullif(count(*) FILTER (WHERE process_status IN ('COMPLETED', 'FAILED')), 0)
     FROM {schema}.pc_product_change_history WHERE requested_at >= pg_catalog.now() - %(window)s::interval)
    AS product_change_success_rate,
  (SELECT 100.0 * count(*) FILTER (WHERE is_success) / nullif(count(*), 0)
     FROM {schema}.pc_kos_integration_log WHERE created_at >= pg_catalog.now() - %(window)s::interval)
    AS kos_integration_success_rate,
  (SELECT avg(extract(epoch FROM completed_at - requested_at))
     FROM {schema}.pc_product_change_history
    WHERE completed_at IS NOT NULL AND requested_at >= pg_catalog.now() - %(window)s::interval)
    AS avg_processing_time

-- name: replication
-- Replay lag of each standby and replica as the primary sees it (seconds; 0 when idle).
SELECT application_name, sync_state, coalesce(extract(epoch FROM replay_lag), 0) AS lag_seconds,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn) AS lag_bytes
  FROM pg_catalog.pg_stat_replication

-- name: timeline
-- The timeline of the last checkpoint (a failover raises it).
SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()
