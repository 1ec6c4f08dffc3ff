"""A SQL text from a spec, parsed with PostgreSQL's own parser (pglast: libpg_query) before it is
ever sent: a business-metric probe must be exactly one read-only SELECT.

Refused: more than one statement, anything but SELECT, SELECT ... INTO, FOR UPDATE/SHARE, a
data-modifying WITH (DELETE ... RETURNING inside a SELECT), and the functions that act on the
server (pg_terminate_backend, pg_sleep, set_config, lo_import, dblink, ...). The runbook also runs
a probe in a READ ONLY transaction under statement_timeout: the parser is the first guard, not the
only one.
"""

from __future__ import annotations

import pglast
from pglast import ast
from pglast.visitors import Visitor

_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt, ast.IntoClause, ast.LockingClause)
# Functions with effects beyond reading (or that take time or call out): never in a probe.
_FORBIDDEN_FUNCTIONS = {
    "pg_sleep", "pg_sleep_for", "pg_sleep_until", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf",
    "pg_rotate_logfile", "set_config", "nextval", "setval", "lo_import", "lo_export", "lo_unlink", "pg_read_file",
    "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "dblink", "dblink_exec", "pg_advisory_lock",
    "pg_advisory_xact_lock", "pg_notify", "pg_switch_wal", "pg_create_restore_point", "txid_current",
    "pg_current_xact_id", "pg_stat_reset", "pg_stat_statements_reset", "pg_logical_emit_message",
}


class _Findings(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def visit(self, ancestors, node):  # noqa: ARG002 - pglast's signature
        if isinstance(node, _WRITES):
            self.problems.append({ast.IntoClause: "SELECT ... INTO creates a table",
                                  ast.LockingClause: "FOR UPDATE/SHARE takes row locks"}.get(
                type(node), f"a {type(node).__name__.removesuffix('Stmt').upper()} inside it writes"))
        elif isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval.lower()
            if name in _FORBIDDEN_FUNCTIONS:
                self.problems.append(f"{name}() acts on the server")


def read_only_select(text: str) -> str | None:
    """None when ``text`` is exactly one read-only SELECT; otherwise what is wrong, in words."""
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        return f"not valid SQL: {exc}"
    if len(statements) != 1:
        return f"{len(statements)} statements; a probe is exactly one SELECT"
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        return f"a {type(statement).__name__.removesuffix('Stmt').upper()} statement; a probe is one read-only SELECT"
    found = _Findings()
    found(statement)
    return "; ".join(dict.fromkeys(found.problems)) + "; a probe only reads" if found.problems else None
