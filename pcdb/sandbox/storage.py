"""The storage quota, enforced as Azure enforces it.

``sandbox.storage_quota`` stands for the server's disk (the spec's storage size). What the
databases take is measured against it; at 95 % the server turns read-only, as an Azure flexible
server does (``default_transaction_read_only``, set with ALTER SYSTEM and a reload, so existing
sessions follow at their next transaction), and it turns writable again once usage is back
below. An operator frees space in a session of its own with ``SET SESSION CHARACTERISTICS AS
TRANSACTION READ WRITE``, as on Azure. The setting is owned by this guard (pcdb.params.OWNED):
the spec cannot set it and the parameter reconciliation never resets it.

The sandbox's supervisor applies the guard every ``CHECK_EVERY`` seconds; `pcdb sandbox status`
shows the usage; Phase 7 checks it.
"""

from __future__ import annotations

from psycopg import sql as psql

from pcdb.sql import query

READ_ONLY_AT_PERCENT = 95.0
CHECK_EVERY = 10.0       # seconds between two looks of the supervisor
SETTING = "default_transaction_read_only"


def usage(sandbox) -> dict:
    """The primary's usage against the quota (raises SandboxError when the primary is down)."""
    with sandbox.primary().connect(sandbox.admin_user, timeout=5) as conn:
        used, read_only, guard_set = conn.execute(query("sandbox.sql", "storage")).fetchone()
    quota = int(sandbox.spec.storage_quota)
    return {"used_bytes": int(used), "quota_bytes": quota, "percent": round(100.0 * used / quota, 1),
            "read_only": bool(read_only), "read_only_by_guard": bool(guard_set),
            "read_only_at_percent": READ_ONLY_AT_PERCENT, "stands_for_bytes": int(sandbox.env.server.storage.size)}


def enforce(sandbox) -> str | None:
    """Turn the primary read-only at the limit, writable again below it; what was done, if anything."""
    now = usage(sandbox)
    full = now["percent"] >= READ_ONLY_AT_PERCENT
    if full == now["read_only_by_guard"]:
        return None
    statement = (psql.SQL("ALTER SYSTEM SET {} = on") if full else psql.SQL("ALTER SYSTEM RESET {}")).format(
        psql.Identifier(SETTING))
    with sandbox.primary().connect(sandbox.admin_user, timeout=5) as conn:
        conn.execute(statement)
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
    if full:
        return (f"storage at {now['percent']} % of the quota: the primary is read-only "
                f"({SETTING} = on) until usage is below {READ_ONLY_AT_PERCENT:g} %")
    return f"storage at {now['percent']} % of the quota: the primary is writable again"


def problem(now: dict | None) -> str | None:
    """The status line a DBA must see, if any."""
    if now is None or now["percent"] < READ_ONLY_AT_PERCENT:
        return None
    state = "read-only" if now["read_only"] else "about to turn read-only"
    return (f"storage at {now['percent']} % of the quota ({now['quota_bytes']} bytes): the primary is {state}, as "
            "Azure makes a server at 95 %; free space (SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE "
            "in your session first) or raise sandbox.storage_quota")
