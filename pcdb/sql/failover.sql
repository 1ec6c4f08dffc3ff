-- Real failovers and the failback (pcdb/failover.py).

-- name: write_check
-- The service takes a write through the application's path: a temporary table, gone with the session.
CREATE TEMPORARY TABLE pcdb_write_check (at timestamptz) ON COMMIT DROP;

-- name: replica_position
-- How far the replica got before the primary region was lost: last replayed transaction and LSN.
SELECT pg_catalog.pg_last_xact_replay_timestamp(), pg_catalog.pg_last_wal_replay_lsn();

-- name: wal_position
-- Where the serving primary's WAL is now: the failback's new server has caught up once it replayed this far.
SELECT pg_catalog.pg_current_wal_lsn()::text;

-- name: replay_position
-- How far the failback's new server (a replica of the promoted one) replayed, and whether it still replays.
SELECT pg_catalog.pg_last_wal_replay_lsn()::text, pg_catalog.pg_is_in_recovery();
