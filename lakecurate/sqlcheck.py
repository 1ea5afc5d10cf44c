"""SQL a user hands in, checked before Lance runs it: a read-only query, or one row condition.

DataFusion, behind ``Lake.sql``, also runs ``COPY ... TO`` (writes any file) and ``CREATE EXTERNAL
TABLE`` (reads any file), and a Lance filter is pasted into ``SELECT ... WHERE <filter>``, so text
after the condition (``width > 400 height > 400``, ``keep LIMIT 1``) changes what it means. Both are
parsed here with sqlglot (a real SQL parser, not patterns) and refused unless they are exactly one
SELECT/WITH over the ``pairs`` table, or exactly one condition. Comments are refused in both, so the
text that is checked and the text that runs cannot be read differently.

Example::

    check_query("SELECT format, count(*) AS n FROM pairs GROUP BY format")   # returns the query
    check_where("width > 400 AND height > 400", "--where", lake.dataset())  # and the condition
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

from lakecurate.errors import LakeError
from lakecurate.options import spell
from lakecurate.schema import TABLE

# Where Lance's Rust sources were built: it ends many messages (", /home/runner/.../scanner.rs:839:33").
_SOURCE_LOCATION = re.compile(r",?\s*(?:/|[A-Za-z]:\\)\S*\.rs:\d+:\d+")

_dialect: Any = None


def literal(value: object) -> str:
    """A SQL string literal of ``value`` (single quotes doubled): for values put into a condition.

    >>> literal("O'Brien"), in_list(["a", "b'c"])
    ("'O''Brien'", "'a', 'b''c'")
    """
    return "'" + str(value).replace("'", "''") + "'"


def in_list(values: Iterable[object]) -> str:
    """The items of an ``IN (...)`` list of string literals."""
    return ", ".join(literal(v) for v in values)


_INTERNAL_FIELDS = re.compile(r",\s*_row(?:id|addr|offset|_last_updated_at_version|_created_at_version)\b")
_SQLGLOT_CLASS = re.compile(r"<class 'sqlglot\.expressions\.(?:\w+\.)*(\w+)'>")


def clean_message(exc: BaseException | str) -> str:
    """An engine error as one line, without the build paths of Lance's sources, Lance's internal
    row fields in a list of valid ones, or sqlglot's class names."""
    text = _SOURCE_LOCATION.sub("", str(exc))
    text = _SQLGLOT_CLASS.sub(lambda m: m.group(1).upper(), _INTERNAL_FIELDS.sub("", text))
    return " ".join(text.split()).rstrip(" ,")


def _parser() -> Any:
    """sqlglot (imported on first use: ~0.15 s the CLI need not pay) with DataFusion's quoting.

    DataFusion reads SQL much as Postgres does (``::`` casts, ``~`` regex match, ``E''`` strings,
    nested comments) and, like Lance's filters, also takes `backquoted` column names.
    """
    global _dialect
    if _dialect is None:
        import logging

        from sqlglot.dialects.postgres import Postgres

        logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns about what it parses loosely

        class DataFusion(Postgres):
            class Tokenizer(Postgres.Tokenizer):
                IDENTIFIERS = ['"', "`"]

        _dialect = DataFusion()
    return _dialect


def condition_columns(where: str) -> list[str]:
    """The columns a condition reads, as the parser sees them (a struct's field, ``meta.x``, by its
    column ``meta``); none for text it cannot parse (:func:`check_where` words that refusal).

    >>> condition_columns("width > 400 AND meta.src = 'a'")
    ['width', 'meta']
    """
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(where, dialect=_parser())
        return list(dict.fromkeys(c.parts[0].name for c in tree.find_all(exp.Column)))
    except (sqlglot.errors.SqlglotError, ValueError):
        return []


MAX_NESTING = 32  # levels of parentheses a query or condition may have


def _parse(text: str, what: str, *, semicolon: bool) -> list[Any]:
    """Statements of ``text``; a LakeError ``what: reason`` for text sqlglot cannot read, with
    comments, or with a ';' (a trailing one is allowed when ``semicolon``)."""
    import sqlglot.errors
    from sqlglot.tokens import TokenType

    dialect = _parser()
    try:
        tokens = dialect.tokenize(text)
        if any(t.comments for t in tokens):
            raise LakeError(f"{what}: comments (-- or /* */) are not accepted; remove them")
        if any(t.token_type == TokenType.SEMICOLON for t in (tokens[:-1] if semicolon else tokens)):
            raise LakeError(f"{what}: ';' separates statements; give exactly one")
        depth = deepest = 0
        for t in tokens:
            depth += (t.token_type == TokenType.L_PAREN) - (t.token_type == TokenType.R_PAREN)
            deepest = max(deepest, depth)
        if deepest > MAX_NESTING:  # the parser (and what walks its tree) recurses: a RecursionError traceback
            raise LakeError(f"{what}: it nests {deepest} levels of parentheses (at most {MAX_NESTING}); write it flatter")
        statements = [s for s in dialect.parse(text) if s is not None]
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as exc:
        errors = getattr(exc, "errors", None)
        if errors:
            e = errors[0]
            raise LakeError(f"{what}: {clean_message(e['description']).lower()} at column {e['col']} "
                            f"(near {(e['highlight'] or '').strip()!r})") from None
        raise LakeError(f"{what}: cannot parse it ({clean_message(exc).splitlines()[0][:120]})") from None
    return statements


def _too_deep(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a RecursionError (sqlglot parses and walks by recursion: 200 NOTs in a row are
    too deep for it) as a one-line LakeError."""
    @functools.wraps(fn)
    def checked(text: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(text, *args, **kw)
        except RecursionError:
            option = spell(args[0] if args else kw.get("option", "the query" if fn.__name__ == "check_query" else "--where"))
            raise LakeError(f"{option} {str(text)[:60]!r}...: it nests too deeply to check; write it flatter") from None
    return checked


@_too_deep
def check_query(query: str) -> str:
    """``query`` unchanged if it is one read-only SELECT (or WITH ... SELECT, or a UNION of them)
    whose tables are all ``pairs`` or names of its own WITH clauses; else a one-line LakeError.

    Refused: any other statement (COPY, CREATE EXTERNAL TABLE, INSERT, SET, EXPLAIN, ...), more than
    one statement, SELECT INTO, table functions (``read_parquet(...)``, ``range(...)``) and tables
    of other names (files, ``information_schema``).
    """
    from sqlglot import exp

    what = f"SQL refused (only one read-only SELECT or WITH query over the table {TABLE} runs)"
    if not isinstance(query, str):
        raise LakeError(f"{what}: the query is {type(query).__name__}; give it as text")
    statements = _parse(query, what, semicolon=True)
    if len(statements) != 1:
        raise LakeError(f"{what}: found {len(statements)} statements; give exactly one")
    (stmt,) = statements
    if not isinstance(stmt, (exp.Select, exp.SetOperation, exp.Subquery)):
        word = query.strip().split(None, 1)[0].upper() if query.strip() else ""
        # the query's own first word: sqlglot reads `INSTALL httpfs` as an expression aliased httpfs
        raise LakeError(f"{what}: {word if word.isalpha() else _kind(stmt)} statements are not allowed")
    forbidden = (exp.DDL, exp.DML, exp.Command, exp.Into, exp.Set, exp.Pragma, exp.Use, exp.Describe,
                 exp.Transaction, exp.Commit, exp.Rollback, exp.Cache, exp.Uncache, exp.LoadData,
                 exp.Refresh, exp.Kill, exp.Drop, exp.Alter, exp.Grant, exp.Revoke, exp.Analyze,
                 exp.Show, exp.Declare, exp.Lateral, exp.TableFromRows)
    ctes = {cte.alias_or_name.lower() for cte in stmt.find_all(exp.CTE)}
    for node in stmt.walk():
        if isinstance(node, exp.Into):
            raise LakeError(f"{what}: SELECT INTO is not allowed")
        if isinstance(node, forbidden):
            raise LakeError(f"{what}: {_kind(node)} is not allowed")
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                fn = node.this.name if isinstance(node.this, exp.Anonymous) else node.this.sql_name()
                at = node.this.meta  # the name as written (generate_series is sqlglot's exploding_generate_series)
                written = query[at["start"]: at["end"] + 1] if "start" in at and "end" in at else ""
                fn = written if re.fullmatch(r"[A-Za-z_][\w$]*", written) else fn
                raise LakeError(f"{what}: table functions such as {fn.lower()}(...) are not allowed; "
                                f"query the table {TABLE}")
            if node.args.get("db") or node.args.get("catalog") or node.name.lower() not in {TABLE, *ctes}:
                raise LakeError(f"{what}: table {node.sql(dialect=_parser())[:60]!r} is not allowed; "
                                f"query the table {TABLE}")
    return query


def _kind(node: Any) -> str:
    """What a statement is, for a message: ``COPY``, ``CREATE``, ``EXPLAIN`` (sqlglot's Command)."""
    from sqlglot import exp

    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return type(node).__name__.upper()


@_too_deep
def check_where(where: str | None, option: str = "--where", ds: Any = None, *, lead: str | None = None) -> str | None:
    """``where`` unchanged if it is exactly one SQL condition on the lake's columns; else a
    one-line LakeError naming ``option`` and the text.

    Refused: trailing text (``width > 400 height > 400``, ``keep LIMIT 1``), several statements
    (``keep; DROP TABLE pairs``), comments, subqueries, and values that are plainly not conditions
    (``width + 1``, ``'x'``). With ``ds`` (a Lance dataset), unknown columns and non-boolean
    results are refused too, by planning the filter on it (no rows are read). ``lead`` replaces the
    start of the message ("--where 'x' is not one SQL condition").
    """
    from sqlglot import exp

    option = spell(option)  # (the Python parameter for a Lake method's caller)
    if where is not None and not isinstance(where, str):
        raise LakeError(f"{option} {where!r} is not one SQL condition: give it as text, e.g. \"width > 400\"")
    if where is None:
        return where
    if not where.strip():  # "" would mean every row to Lance, and no filter to a caller testing `if where`
        raise LakeError(f"{lead or f'{option} {where!r}'}: an empty condition selects nothing in particular; "
                        f"give one, e.g. \"keep\" or \"width > 400\", or leave {option} out for the default")
    what = lead or f"{option} {where!r} is not one SQL condition"
    hint = "; write one condition, e.g. \"width > 400 AND height > 400\""
    statements = _parse(where, what, semicolon=False)
    if len(statements) != 1:
        raise LakeError(f"{what}: found {len(statements)} parts{hint}")
    (cond,) = statements
    for node in cond.walk():
        if isinstance(node, (exp.Query, exp.DDL, exp.DML, exp.Command, exp.Table, exp.Set)):
            raise LakeError(f"{what}: a {_kind(node) if not isinstance(node, exp.Query) else 'subquery'} "
                            f"is not allowed in a condition{hint}")
        if isinstance(node, (exp.Star, exp.Alias, exp.Placeholder, exp.Parameter)):
            raise LakeError(f"{what}: {node.sql(dialect=_parser())[:40]!r} has no place in a condition{hint}")
        if isinstance(node, exp.RawString):  # $$text$$: planned, then a panic in Lance's filter at run time
            raise LakeError(f"{what}: write the text {node.sql(dialect=_parser())[:40]} in single quotes "
                            "(a $$...$$ string is not read by Lance's filters)")
    arithmetic = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Neg, exp.DPipe, exp.Literal)
    if not isinstance(cond, exp.Condition) or isinstance(cond, arithmetic):
        raise LakeError(f"{what}: it is a value, not true or false{hint}")
    if ds is not None:
        try:  # planning checks column names and that the result is boolean; no data is read
            ds.scanner(columns=[], with_row_id=True, filter=where, limit=0).explain_plan()
        except Exception as exc:  # Lance reports bad filters as ValueError/OSError with build paths
            raise LakeError(f"{lead or f'{option} {where!r} cannot select rows'}: {clean_message(exc)}") from None
    return where



@functools.lru_cache(maxsize=256)
def bare_name_problem(name: str) -> str | None:
    """Why ``name``, unquoted, is not read as a column by the SQL a lake takes (None when it is):
    sqlglot, which checks every query and condition here, and DataFusion, which runs them (Lance's
    SQL and filters). Asked of the parsers themselves, not a list of words: ``select`` and ``end``
    do not parse as columns, and DataFusion reads ``null``, ``true`` or ``current_date`` as values.

    >>> bare_name_problem("caption_words") is None, bare_name_problem("select") is not None
    (True, True)
    """
    import os
    import tempfile

    import lance
    import pyarrow as pa
    from sqlglot import exp

    def column(node: Any) -> bool:
        return isinstance(node, exp.Column) and node.name == name and not node.table

    query = f"SELECT {name} FROM {TABLE} WHERE {name} > 0 ORDER BY {name}"
    try:
        check_query(query)
        check_where(f"{name} > 0")
        check_where(f"{name} IS NULL")
        (stmt,) = _parse(query, "", semicolon=False)
        (cond,) = _parse(f"{name} > 0", "", semicolon=False)
    except LakeError:
        return f"sqlglot, which checks every query and {spell('--where')}, reads it as a keyword"
    if not (len(stmt.expressions) == 1 and column(stmt.expressions[0]) and isinstance(cond, exp.GT)
            and column(cond.this) and isinstance(stmt.args.get("where").this, exp.GT)
            and column(stmt.args["where"].this.this)):
        return f"sqlglot, which checks every query and {spell('--where')}, reads it as a value or keyword"
    try:
        with tempfile.TemporaryDirectory(prefix="lakecurate-name-") as tmp:
            ds = lance.write_dataset(pa.table({name: pa.array([1, None], pa.int32())}), os.path.join(tmp, "probe.lance"),
                                     mode="create")
            counts = ds.count_rows(filter=f"{name} > 0"), ds.count_rows(filter=f"{name} IS NULL")
            got = ds.sql(query).table_name(TABLE).build().to_stream_reader().read_all()
    except Exception:  # a parse or planning error: the word is taken
        return "DataFusion, which runs queries and filters, reads it as a keyword"
    if counts != (1, 1) or got.column_names != [name] or got.to_pylist() != [{name: 1}]:
        return "DataFusion, which runs queries and filters, reads it as a value or keyword"
    return None
