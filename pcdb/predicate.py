"""A person's ``--where``: one boolean expression, parsed by PostgreSQL's own parser and checked
against an allow-list, never pasted into a statement.

The text is parsed (pglast, libpg_query) as the WHERE clause of ``SELECT 1 FROM t WHERE …``;
the statement must come back exactly as that wrapper, so a second statement, a UNION, an ORDER
BY or a LIMIT smuggled after the expression is refused. The expression tree may hold only:
column references of the named tables, constants, comparisons, AND/OR/NOT, IN lists, BETWEEN,
IS [NOT] NULL, IS [NOT] TRUE/FALSE, casts to plain types, ``+``/``-`` (date arithmetic), and
the functions of :data:`FUNCTIONS` (date and time, lower/upper, coalesce). What runs is the
checked tree printed again, not the person's text; it runs with ``search_path = pg_catalog``
(no operator or function of another schema can stand in), in READ ONLY transactions with a
statement timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.enums.parsenodes import A_Expr_Kind
from pglast.enums.primnodes import SQLValueFunctionOp
from pglast.parser import ParseError
from pglast.stream import RawStream

from pcdb.errors import PcdbError

# Date and time, letter case, and coalesce (a CoalesceExpr node, not a function call).
FUNCTIONS = frozenset({
    "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "date_trunc", "date_part",
    "extract", "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval", "to_date",
    "to_timestamp", "age", "timezone", "date", "lower", "upper"})
COMPARISONS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
ARITHMETIC = frozenset({"+", "-"})
TYPES = frozenset({
    "bool", "boolean", "int2", "int4", "int8", "smallint", "integer", "int", "bigint", "numeric", "decimal",
    "float4", "float8", "real", "text", "varchar", "bpchar", "char", "date", "time", "timetz", "timestamp",
    "timestamptz", "interval", "uuid"})
_KINDS = {A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN,
          A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT}
_CLOCK = {SQLValueFunctionOp.SVFOP_CURRENT_DATE, SQLValueFunctionOp.SVFOP_CURRENT_TIME,
          SQLValueFunctionOp.SVFOP_CURRENT_TIME_N, SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP,
          SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP_N, SQLValueFunctionOp.SVFOP_LOCALTIME,
          SQLValueFunctionOp.SVFOP_LOCALTIME_N, SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP,
          SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP_N}
_NAMES = {"SubLink": "a subquery", "SelectStmt": "a query", "CaseExpr": "CASE", "RowExpr": "a row constructor",
          "A_ArrayExpr": "an array", "ParamRef": "a parameter ($n)", "CollateClause": "COLLATE",
          "A_Indirection": "a subscript or field selection", "MinMaxExpr": "GREATEST/LEAST",
          "A_Star": "*", "XmlExpr": "an XML expression", "SQLValueFunction": "a session function"}
_WRAPPER = "SELECT 1 FROM t WHERE "


class PredicateError(PcdbError):
    """The --where text is not one allowed boolean expression."""


@dataclass(frozen=True)
class Predicate:
    """A checked expression: ``sql`` is the tree printed again; ``columns`` the names it reads."""

    text: str
    sql: str
    columns: frozenset[str]


def parse(text: str) -> Predicate:
    """Parse and check a ``--where`` expression.

    Raises:
        PredicateError: the text is not SQL, not a single expression, or holds something that
            is not allowed (named in the message).
    """
    if not text.strip():
        raise PredicateError("--where is empty: give a condition on the table's columns, e.g. "
                             "\"created_at >= '2026-11-27 10:00+09'\"")
    try:
        statements = parse_sql(_WRAPPER + text)
    except ParseError as exc:
        raise PredicateError(f"--where {text!r} is not a valid SQL expression: {exc}") from None
    if len(statements) != 1:
        raise PredicateError(f"--where {text!r} holds a second statement: only one condition is allowed, never "
                             "statements")
    stmt = statements[0].stmt
    where = getattr(stmt, "whereClause", None)
    if not isinstance(stmt, ast.SelectStmt) or where is None:
        raise PredicateError(f"--where {text!r} is not a single condition")
    printed = RawStream()(where)
    if RawStream()(stmt) != RawStream()(parse_sql(_WRAPPER + printed)[0].stmt):
        raise PredicateError(f"--where {text!r} adds clauses after the condition (UNION, ORDER BY, LIMIT, GROUP BY, "
                             "FOR UPDATE...): only one condition is allowed")
    columns: set[str] = set()
    _check(where, columns, text)
    return Predicate(text, printed, frozenset(columns))


def check_columns(predicate: Predicate, table: str, columns: set[str]) -> None:
    """Every column the expression reads is a column of ``table``.

    Raises:
        PredicateError: naming the column and the table's columns.
    """
    unknown = sorted(predicate.columns - columns)
    if unknown:
        raise PredicateError(f"--where reads {', '.join(unknown)}, not a column of {table} "
                             f"(its columns: {', '.join(sorted(columns))})")


def _refuse(what: str, text: str) -> PredicateError:
    return PredicateError(f"{what} is not allowed in --where {text!r}. Allowed: column names, constants, "
                          "comparisons, AND/OR/NOT, IN (...), BETWEEN, IS [NOT] NULL, casts, + and -, and the "
                          f"functions {', '.join(sorted(FUNCTIONS))}, coalesce")


def _names(nodes) -> list[str]:
    return [n.sval for n in nodes or ()]


def _check(node, columns: set[str], text: str) -> None:
    if node is None:
        return
    if isinstance(node, tuple):
        for item in node:
            _check(item, columns, text)
        return
    if isinstance(node, ast.BoolExpr):
        _check(node.args, columns, text)
    elif isinstance(node, ast.A_Expr):
        names = _names(node.name)
        if node.kind not in _KINDS or len(names) != 1:
            raise _refuse(f"the operator {' '.join(names) or node.kind.name}", text)
        op = names[0]
        if node.kind == A_Expr_Kind.AEXPR_OP and op not in COMPARISONS | ARITHMETIC:
            raise _refuse(f"the operator {op}", text)
        if node.kind == A_Expr_Kind.AEXPR_IN and not isinstance(node.rexpr, tuple):
            raise _refuse("IN with anything but a list", text)
        _check(node.lexpr, columns, text)
        _check(node.rexpr, columns, text)
    elif isinstance(node, ast.NullTest | ast.BooleanTest):
        _check(node.arg, columns, text)
    elif isinstance(node, ast.ColumnRef):
        fields = node.fields or ()
        if len(fields) != 1 or not isinstance(fields[0], ast.String):
            raise _refuse("a qualified name or *", text)
        columns.add(fields[0].sval)
    elif isinstance(node, ast.A_Const):
        return
    elif isinstance(node, ast.TypeCast):
        type_names = _names(node.typeName.names)
        name = type_names[-1] if type_names else ""
        if (len(type_names) == 2 and type_names[0] != "pg_catalog") or len(type_names) > 2 or name not in TYPES \
                or node.typeName.arrayBounds or node.typeName.setof:
            raise _refuse(f"a cast to {'.'.join(type_names)}", text)
        _check(node.typeName.typmods, columns, text)
        _check(node.arg, columns, text)
    elif isinstance(node, ast.FuncCall):
        names = _names(node.funcname)
        name = names[-1] if names else ""
        if (len(names) == 2 and names[0] != "pg_catalog") or len(names) > 2 or name not in FUNCTIONS:
            raise _refuse(f"the function {'.'.join(names)}", text)
        if node.agg_star or node.agg_distinct or node.over or node.agg_filter or node.agg_order \
                or node.func_variadic or node.agg_within_group:
            raise _refuse(f"{name} used as an aggregate or window function", text)
        _check(node.args, columns, text)
    elif isinstance(node, ast.CoalesceExpr):
        _check(node.args, columns, text)
    elif isinstance(node, ast.SQLValueFunction) and node.op in _CLOCK:
        return
    else:
        kind = type(node).__name__
        raise _refuse(_NAMES.get(kind, kind), text)
