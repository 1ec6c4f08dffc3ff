-- Weekly capacity snapshot (§8.1.2, §8.3.1): sizes, rows, ages and bloat of the service database.

-- name: relations
-- Every ordinary and partitioned table outside the system schemas, partitions summed into their root.
WITH leaf AS (
  SELECT c.oid, coalesce(pg_catalog.pg_partition_root(c.oid), c.oid) AS root,
         pg_catalog.pg_relation_size(c.oid) AS heap_bytes,
         pg_catalog.pg_indexes_size(c.oid) AS index_bytes,
         pg_catalog.pg_total_relation_size(c.oid) - pg_catalog.pg_relation_size(c.oid)
           - pg_catalog.pg_indexes_size(c.oid) AS toast_bytes,
         CASE WHEN c.relkind = 'r' THEN greatest(coalesce(s.n_live_tup, 0), c.reltuples::bigint, 0) ELSE 0 END
           AS row_count,                               -- a partitioned parent's reltuples sums its partitions
         CASE WHEN c.relkind = 'r' THEN pg_catalog.age(c.relfrozenxid) END AS xid_age,
         -- dead-tuple estimate of bloat: the dead share of the heap (statistics, not a scan)
         (pg_catalog.pg_relation_size(c.oid) * coalesce(s.n_dead_tup, 0)
           / nullif(coalesce(s.n_live_tup, 0) + coalesce(s.n_dead_tup, 0), 0))::bigint AS bloat_bytes
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid
   WHERE c.relkind IN ('r', 'p')
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
)
SELECT pg_catalog.format('%I.%I', rn.nspname, r.relname) AS name,
       count(*) - 1 AS partitions,
       sum(heap_bytes)::bigint AS heap_bytes, sum(index_bytes)::bigint AS index_bytes,
       sum(toast_bytes)::bigint AS toast_bytes, sum(row_count)::bigint AS row_count,
       max(xid_age)::bigint AS xid_age, coalesce(sum(bloat_bytes), 0)::bigint AS bloat_bytes
  FROM leaf
  JOIN pg_catalog.pg_class r ON r.oid = leaf.root
  JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
 GROUP BY rn.nspname, r.relname
 ORDER BY 1

-- name: sequences
-- How much of each sequence's range is used.
SELECT pg_catalog.format('%I.%I', schemaname, sequencename) AS name,
       coalesce(100.0 * (last_value - min_value) / nullif(max_value - min_value, 0), 0)::float8 AS used_percent
  FROM pg_catalog.pg_sequences
 ORDER BY 1

-- name: log_volume
-- The server log's size (C-6: log_statement 'all'); needs pg_monitor or superuser.
SELECT coalesce(sum(size), 0)::bigint AS log_bytes, count(*) AS log_files FROM pg_catalog.pg_ls_logdir()
