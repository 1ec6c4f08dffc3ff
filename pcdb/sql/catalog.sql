-- Small catalog questions the runbooks share.

-- name: pg_stat_statements_installed
-- Whether pg_stat_statements is installed in this database.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_stat_statements')

-- name: my_memberships
-- The roles the current user is a member of.
SELECT g.rolname
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
  WHERE m.member = (SELECT oid
  FROM pg_catalog.pg_roles
  WHERE rolname = current_user)

-- name: am_superuser
-- Whether the current user is a superuser.
SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user

-- name: relation_missing
-- Whether a relation (schema.name) does not exist.
SELECT to_regclass(%s) IS NULL

-- name: schema_exists
-- Whether a schema exists.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s)

-- name: relation_exists
-- Whether a relation (schema.name) exists.
SELECT pg_catalog.to_regclass(%s) IS NOT NULL

-- name: schema_missing
-- Whether a schema does not exist.
SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s)

-- name: memberships_of
-- The roles a role is a member of (pg_* included).
SELECT g.rolname
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
  JOIN pg_catalog.pg_roles u ON u.oid = m.member
  WHERE u.rolname = %s
  ORDER BY 1

-- name: system_identifier
-- The cluster's identity (pg_control): the same on a physical copy, new for a new cluster (initdb).
SELECT system_identifier::text FROM pg_catalog.pg_control_system();
