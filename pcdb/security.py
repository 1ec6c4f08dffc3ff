"""Phase 5: roles, their passwords and connection limits, and grants exactly as §4.1.2.

Grants are reconciled both ways: what the spec grants is granted, what it does not is revoked
(least privilege, R-SEC-2/R-OPS-3). Passwords are set as SCRAM verifiers, so no log ever holds
one; a password is only (re)set when the role cannot log in with it, and the time it was set is
recorded so the 90-day expiry (R-SEC-3) is tracked without PostgreSQL locking the application
out on day 91 (the document itself sets VALID UNTIL 'infinity').
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql as psql

from pcdb.changes import Change
from pcdb.config import Grants, Role
from pcdb.errors import PcdbError, SecretError, TargetError
from pcdb.scram import matches, verifier
from pcdb.sql import query

ALL_TABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
ALL_SEQUENCE = ("USAGE", "SELECT", "UPDATE")
ALL_DATABASE = ("CONNECT", "CREATE", "TEMPORARY")
ALL_SCHEMA = ("USAGE", "CREATE")
# Every privilege keyword a GRANT or REVOKE here may name (MAINTAIN: PostgreSQL 17's, which the
# catalog of a newer server may show and the install then revokes).
PRIVILEGE_KEYWORDS = frozenset({*ALL_TABLE, *ALL_SEQUENCE, *ALL_DATABASE, *ALL_SCHEMA, "MAINTAIN"})

PasswordCheck = Callable[[str, str], bool]
SYSTEM_DATABASES = ("postgres", "template1")


def _expand(privileges: list[str], everything: tuple[str, ...]) -> set[str]:
    return set(everything) if "ALL" in privileges else set(privileges)


def _q(name: str, **identifiers: str) -> psql.Composed:
    return psql.SQL(query("install.sql", name)).format(
        **{k: psql.Identifier(v) for k, v in identifiers.items()})


def ensure_role(conn: psycopg.Connection, role: Role, password: str, can_log_in: PasswordCheck,
                ledger_schema: str, expiry: timedelta, history: int = 5) -> Change:
    """Create the role or bring its attributes and password to the spec.

    Raises:
        SecretError: the new password is one of the role's last ``history`` passwords (§4.3.2).
    """
    current, wanted = _attributes(conn, role)
    options = psql.SQL(" ").join([
        psql.SQL("LOGIN"), psql.SQL("CONNECTION LIMIT {}").format(psql.Literal(role.connection_limit)),
        psql.SQL("CREATEDB" if wanted["createdb"] else "NOCREATEDB"),
        psql.SQL("CREATEROLE" if wanted["createrole"] else "NOCREATEROLE"),
        psql.SQL("NOINHERIT"),
        psql.SQL("VALID UNTIL 'infinity'")])
    new_verifier = verifier(password)
    secret = psql.SQL("PASSWORD {}").format(psql.Literal(new_verifier))
    if current is None:
        conn.execute(psql.SQL("CREATE ROLE {} WITH {} {}").format(psql.Identifier(role.name), options, secret))
        _record_password(conn, role.name, ledger_schema, expiry, new_verifier)
        return Change("role", role.name, "created", notes=(f"connection limit {role.connection_limit}",))
    diff = {k: (current[k], v) for k, v in wanted.items() if current[k] != v}
    if diff:
        # Only a superuser may take these away (on Azure no one may grant them): named only when held.
        taken = [psql.SQL(word) for key, word in (("superuser", "NOSUPERUSER"), ("replication", "NOREPLICATION"),
                                                   ("bypassrls", "NOBYPASSRLS")) if current[key]]
        conn.execute(psql.SQL("ALTER ROLE {} WITH {}").format(psql.Identifier(role.name),
                                                              psql.SQL(" ").join([options, *taken])))
    granted = memberships(conn, role.name)
    if granted:
        # The spec grants no role membership. On PostgreSQL 15 a CREATEROLE role can make itself a
        # member of pg_execute_server_program (COPY ... TO PROGRAM as the server's OS user): undone here.
        for parent in granted:
            conn.execute(psql.SQL("REVOKE {} FROM {}").format(psql.Identifier(parent), psql.Identifier(role.name)))
        diff["member of"] = (",".join(granted), "-")
    if not can_log_in(role.name, password):
        _refuse_reuse(conn, role.name, password, ledger_schema, history)
        conn.execute(psql.SQL("ALTER ROLE {} WITH {}").format(psql.Identifier(role.name), secret))
        _record_password(conn, role.name, ledger_schema, expiry, new_verifier)
        diff["password"] = ("(differs from its source)", "(set from its source)")
    return Change("role", role.name, "updated" if diff else "unchanged", diff=diff)


def _attributes(conn: psycopg.Connection, role: Role) -> tuple[dict | None, dict]:
    """(what the role has now, or None when it does not exist; what the spec gives it). NOINHERIT:
    a membership granted behind the spec's back brings no privilege by itself (it would need SET
    ROLE, which the audit log shows); SUPERUSER, REPLICATION and BYPASSRLS are never given."""
    row = conn.execute(query("install.sql", "role_attributes"), {"role": role.name}).fetchone()
    wanted = {"login": True, "connection_limit": role.connection_limit, "createdb": "CREATEDB" in role.attributes,
              "createrole": "CREATEROLE" in role.attributes, "inherit": False, "superuser": False,
              "replication": False, "bypassrls": False}
    # role_attributes returns the columns in the order of ``wanted``
    return (dict(zip(wanted, row)) if row is not None else None), wanted


def role_plan(conn: psycopg.Connection, role: Role, password_ok: bool | None) -> Change:
    """Read-only: what ensure_role would do to ``role`` (``password_ok`` None: not known)."""
    current, wanted = _attributes(conn, role)
    if current is None:
        return Change("role", role.name, "created", notes=(f"connection limit {role.connection_limit}, "
                                                           f"{' '.join(role.attributes) or 'no attributes'}, NOINHERIT",))
    diff: dict[str, tuple[object, object]] = {k: (current[k], v) for k, v in wanted.items() if current[k] != v}
    granted = memberships(conn, role.name)
    if granted:
        diff["member of"] = (",".join(granted), "-")
    if password_ok is False:
        diff["password"] = ("(differs from its source)", "(set from its source)")
    return Change("role", role.name, "updated" if diff else "unchanged", diff=diff)


@dataclass(frozen=True)
class RoleFinding:
    """A role the spec does not account for, or a spec role with more than the spec gives."""

    role: str
    in_spec: bool
    problems: tuple[str, ...]


def role_inventory(conn: psycopg.Connection, spec_roles: list[Role], admin: str,
                   platform_roles: set[str]) -> list[RoleFinding]:
    """Every role of the server that the spec does not name (PostgreSQL's predefined pg_* roles and
    the platform's own aside), and every role with SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS
    or a membership that the spec does not give, predefined roles such as pg_execute_server_program
    included. The admin the install runs as is the platform's and is not judged here."""
    named = {r.name: r for r in spec_roles}
    out = []
    for name, superuser, login, createrole, replication, bypassrls, member_of in conn.execute(
            query("install.sql", "role_inventory")):
        if name == admin or name in platform_roles:
            continue
        spec = named.get(name)
        problems = []
        if spec is None:
            problems.append("not in the spec" + (" (can log in)" if login else ""))
        if superuser:
            problems.append("SUPERUSER")
        if createrole and (spec is None or "CREATEROLE" not in spec.attributes):
            problems.append("CREATEROLE")
        if replication:
            problems.append("REPLICATION")
        if bypassrls:
            problems.append("BYPASSRLS")
        if member_of:
            problems.append(f"member of {', '.join(member_of)}")
        if problems:
            out.append(RoleFinding(name, spec is not None, tuple(problems)))
    return out


def drop_role(conn: psycopg.Connection, role: str, heir: str, databases: list[str],
              connect_to: Callable[[str], psycopg.Connection]) -> None:
    """Remove a role the spec does not name: what it owns goes to ``heir`` (nothing is deleted),
    its privileges are revoked in every database, then the role itself."""
    for database in databases:
        with connect_to(database) as db:
            db.execute(psql.SQL("REASSIGN OWNED BY {} TO {}").format(psql.Identifier(role), psql.Identifier(heir)))
            db.execute(psql.SQL("DROP OWNED BY {}").format(psql.Identifier(role)))
    conn.execute(psql.SQL("DROP ROLE {}").format(psql.Identifier(role)))


def memberships(conn: psycopg.Connection, role: str) -> list[str]:
    """The roles ``role`` is a member of (predefined pg_* roles included)."""
    return [r[0] for r in conn.execute(
        query("catalog.sql", "memberships_of"), (role,))]


def _refuse_reuse(conn: psycopg.Connection, role: str, password: str, schema: str, history: int) -> None:
    """The §4.3.2 history rule: none of the role's last ``history`` passwords again."""
    if history <= 0 or not conn.execute(query("catalog.sql", "relation_exists"),
                                        (f"{schema}.pcdb_password_history",)).fetchone()[0]:
        return
    recent = [r[0] for r in conn.execute(_q("recent_passwords", schema=schema), {"role": role, "n": history})]
    if any(matches(stored, password) for stored in recent):
        raise SecretError(f"the new password of role {role} is one of its last {history} passwords (policy §4.3.2, "
                          "no reuse); set a new one at its source. The role was not changed")


def _record_password(conn: psycopg.Connection, role: str, schema: str, expiry: timedelta, stored: str) -> None:
    conn.execute(psql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psql.Identifier(schema)))
    conn.execute(_q("password_ledger", schema=schema))
    conn.execute(_q("record_password", schema=schema), {"role": role, "expiry": expiry})
    conn.execute(_q("password_history_table", schema=schema))
    conn.execute(_q("record_password_history", schema=schema), {"role": role, "verifier": stored})


def password_expiry(conn: psycopg.Connection, ledger_schema: str) -> dict:
    """role -> when its password is due for rotation (90 days after it was set, R-SEC-3)."""
    present = conn.execute(query("catalog.sql", "relation_exists"),
                           (f"{ledger_schema}.pcdb_password_ledger",)).fetchone()[0]
    if not present:
        return {}
    return {r[0]: r[2] for r in conn.execute(_q("password_expiry", schema=ledger_schema))}


def desired_privileges(grants: Grants, tables: list[str], sequences: list[str]) -> dict[tuple[str, str], set[str]]:
    """(kind, object) -> privileges, for kinds database, schema, table, sequence."""
    out: dict[tuple[str, str], set[str]] = {
        ("database", ""): _expand(grants.database, ALL_DATABASE),
        ("schema", ""): _expand(grants.schema_, ALL_SCHEMA),
    }
    for table in tables:
        privs = _expand(grants.all_tables, ALL_TABLE) | _expand(grants.tables.get(table, []), ALL_TABLE)
        out[("table", table)] = privs
    for sequence in sequences:
        out[("sequence", sequence)] = _expand(grants.sequences, ALL_SEQUENCE)
    return out


def current_privileges(conn: psycopg.Connection, database: str, schema: str,
                       roles: list[str]) -> dict[str, dict[tuple[str, str], set[str]]]:
    """role -> (kind, object) -> privileges granted directly."""
    out: dict[str, dict[tuple[str, str], set[str]]] = {r: {} for r in roles}

    def add(role: str, key: tuple[str, str], privilege: str) -> None:
        out[role].setdefault(key, set()).add(privilege)
    for role, priv in conn.execute(query("install.sql", "database_grants"), {"database": database, "roles": roles}):
        add(role, ("database", ""), priv)
    for role, priv in conn.execute(query("install.sql", "schema_grants"), {"schema": schema, "roles": roles}):
        add(role, ("schema", ""), priv)
    for table, role, priv in conn.execute(query("install.sql", "table_grants"), {"schema": schema, "roles": roles}):
        add(role, ("table", table), priv)
    for seq, role, priv in conn.execute(query("install.sql", "sequence_grants"), {"schema": schema, "roles": roles}):
        add(role, ("sequence", seq), priv)
    return out


def grant_differences(conn: psycopg.Connection, roles: list[Role], database: str,
                      schema: str) -> dict[str, tuple[str, str]]:
    """Where the privileges granted differ from the spec (§4.1.2), read only: "<role> on <kind>
    <object>" -> (granted, spec)."""
    tables = [r[0] for r in conn.execute(query("install.sql", "schema_tables"), {"schema": schema})]
    sequences = [r[0] for r in conn.execute(query("install.sql", "schema_sequences"), {"schema": schema})]
    current = current_privileges(conn, database, schema, [r.name for r in roles])
    diff = {}
    for role in roles:
        wanted = desired_privileges(role.grants, tables, sequences)
        for key in sorted(set(wanted) | set(current[role.name])):
            have, want = current[role.name].get(key, set()), wanted.get(key, set())
            if have != want:
                diff[_label(role.name, key, database, schema)] = (",".join(sorted(have)) or "-",
                                                                  ",".join(sorted(want)) or "-")
    return diff


def _label(role: str, key: tuple[str, str], database: str, schema: str) -> str:
    return f"{role} on {key[0]} {key[1] or database if key[0] == 'database' else key[1] or schema}"


def ensure_grants(conn: psycopg.Connection, roles: list[Role], database: str, schema: str) -> Change:
    """Grant what the spec grants and revoke what it does not, on the database, schema,
    tables and sequences; set default privileges so tables added later follow the same rules."""
    tables = [r[0] for r in conn.execute(query("install.sql", "schema_tables"), {"schema": schema})]
    sequences = [r[0] for r in conn.execute(query("install.sql", "schema_sequences"), {"schema": schema})]
    names = [r.name for r in roles]
    current = current_privileges(conn, database, schema, names)
    diff: dict[str, tuple[object, object]] = {}
    with conn.transaction():
        for role in roles:
            wanted = desired_privileges(role.grants, tables, sequences)
            for key in sorted(set(wanted) | set(current[role.name])):
                have, want = current[role.name].get(key, set()), wanted.get(key, set())
                if have == want:
                    continue
                target = _object(key, database, schema)
                if want - have:
                    conn.execute(psql.SQL("GRANT {} ON {} TO {}").format(
                        _privs(want - have), target, psql.Identifier(role.name)))
                if have - want:
                    conn.execute(psql.SQL("REVOKE {} ON {} FROM {}").format(
                        _privs(have - want), target, psql.Identifier(role.name)))
                diff[_label(role.name, key, database, schema)] = (
                    ",".join(sorted(have)) or "-", ",".join(sorted(want)) or "-")
        public = {r[0] for r in conn.execute(query("install.sql", "public_database_grants"), {"database": database})}
        if public:
            # Only the roles the spec grants CONNECT may connect: PUBLIC's default CONNECT and
            # TEMPORARY would let any other login role in (and create temp tables).
            conn.execute(psql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(psql.Identifier(database)))
            if conn.execute(query("install.sql", "public_database_grants"), {"database": database}).fetchone():
                # REVOKE by a role that does not own the database only warns: say it, do not loop.
                raise TargetError(f"PUBLIC keeps {', '.join(sorted(public))} on database {database}: the admin "
                                  "that runs the install must own it (ALTER DATABASE ... OWNER TO it)")
            diff[f"PUBLIC on database {database}"] = (",".join(sorted(public)), "-")
        for other in SYSTEM_DATABASES:
            # The maintenance databases: no spec role has business there (nor the replication role,
            # which streams without a database); only the admin connects. Where the admin does not
            # own them (Azure), PostgreSQL only warns: the check of Phase 7 tells.
            if conn.execute(query("install.sql", "public_database_grants"), {"database": other}).fetchone():
                conn.execute(psql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(psql.Identifier(other)))
                if not conn.execute(query("install.sql", "public_database_grants"), {"database": other}).fetchone():
                    diff[f"PUBLIC on database {other}"] = ("CONNECT,TEMPORARY", "-")
        defaults = ensure_default_privileges(conn, roles, schema)
    diff.update(defaults)
    return Change("grants", schema, "updated" if diff else "unchanged", diff=diff)


def _object(key: tuple[str, str], database: str, schema: str) -> psql.Composable:
    kind, name = key
    if kind == "database":
        return psql.SQL("DATABASE {}").format(psql.Identifier(database))
    if kind == "schema":
        return psql.SQL("SCHEMA {}").format(psql.Identifier(schema))
    word = "TABLE" if kind == "table" else "SEQUENCE"
    return psql.SQL(word + " {}.{}").format(psql.Identifier(schema), psql.Identifier(name))


def _privs(privileges: set[str]) -> psql.Composable:
    """Privilege keywords as SQL: only the ones PostgreSQL names (the spec's are typed, the server's
    come from its catalog; anything else is refused here, where it would become SQL)."""
    unknown = privileges - PRIVILEGE_KEYWORDS
    if unknown:
        raise PcdbError(f"not a privilege: {', '.join(sorted(unknown))}")
    return psql.SQL(", ").join(psql.SQL(p) for p in sorted(privileges))


def ensure_default_privileges(conn: psycopg.Connection, roles: list[Role], schema: str) -> dict:
    """Tables and sequences created later by the owner get each role's all_tables/sequences rights."""
    owner = conn.execute("SELECT current_user").fetchone()[0]
    names = [r.name for r in roles]
    have: dict[tuple[str, str], set[str]] = {}
    for objtype, role, priv in conn.execute(query("install.sql", "default_privileges"),
                                            {"schema": schema, "owner": owner, "roles": names}):
        have.setdefault((role, objtype), set()).add(priv)
    diff = {}
    for role in roles:
        for objtype, word, wanted in (("r", "TABLES", _expand(role.grants.all_tables, ALL_TABLE)),
                                      ("S", "SEQUENCES", _expand(role.grants.sequences, ALL_SEQUENCE))):
            current = have.get((role.name, objtype), set())
            if current == wanted:
                continue
            base = psql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} ").format(
                psql.Identifier(owner), psql.Identifier(schema))
            if wanted - current:
                conn.execute(base + psql.SQL("GRANT {} ON " + word + " TO {}").format(
                    _privs(wanted - current), psql.Identifier(role.name)))
            if current - wanted:
                conn.execute(base + psql.SQL("REVOKE {} ON " + word + " FROM {}").format(
                    _privs(current - wanted), psql.Identifier(role.name)))
            diff[f"{role.name} default on new {word.lower()}"] = (",".join(sorted(current)) or "-",
                                                                  ",".join(sorted(wanted)) or "-")
    return diff
