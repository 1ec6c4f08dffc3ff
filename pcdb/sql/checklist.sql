-- The daily checklist's probes (§8.1.1, R-OPS-1).

-- name: replica_lags
-- Each asynchronous replica's replay lag in seconds.
SELECT application_name, coalesce(extract(epoch FROM replay_lag), 0)
  FROM pg_catalog.pg_stat_replication
  WHERE sync_state = 'async'

-- name: active_waits
-- What active client sessions wait on now.
SELECT wait_event_type, wait_event, count(*)
  FROM pg_catalog.pg_stat_activity
  WHERE wait_event IS NOT NULL AND backend_type = 'client backend' AND state = 'active'
  GROUP BY 1, 2
  ORDER BY 3 DESC

-- name: connection_use
-- Client sessions now and max_connections.
SELECT (SELECT count(*)
  FROM pg_catalog.pg_stat_activity
  WHERE backend_type = 'client backend'), current_setting('max_connections')::int

-- name: logged_in_roles
-- The roles that have sessions now.
SELECT DISTINCT usename FROM pg_catalog.pg_stat_activity WHERE usename IS NOT NULL

-- name: slowest_statements
-- The five statements with the longest single execution above the threshold.
SELECT left(query, 80), calls, round(max_exec_time::numeric, 1)
  FROM pg_stat_statements
  WHERE max_exec_time >= %s
  ORDER BY max_exec_time DESC LIMIT 5

-- name: block_counters
-- Buffer hits and reads of every database since the statistics reset.
SELECT sum(blks_hit), sum(blks_read) FROM pg_catalog.pg_stat_database
