-- Real failovers and the failback (pcdb/failover.py).

-- name: write_check
-- The service takes a write through the application's path: a temporary table, gone with the session.
CREATE TEMPORARY TABLE pcdb_write_check (at timestamptz) ON COMMIT DROP;

-- name: replica_position
-- How far the replica got before the primary region was lost: last replayed transaction and LSN.
SELECT pg_catalog.pg_last_xact_replay_timestamp(), pg_catalog.pg_last_wal_replay_lsn();
