"""The `where` language shared by the filter job and the reader: a small, safe subset of SQL's WHERE.

    expr        := or
    or          := and ("or" and)*
    and         := not ("and" not)*
    not         := "not" not | predicate
    predicate   := operand [ CMP operand | "is" ["not"] "null" | ["not"] "in" "(" literal ("," literal)* ")" ]
    operand     := column | literal | "(" expr ")"
    CMP         := < <= > >= = == != <>
    literal     := number (optionally negative) | 'string' | "string" | true | false

Keywords are case-insensitive; a quote inside a string is doubled (`'it''s'`). A bare boolean column
(`passed`) is a predicate. Columns are checked against the cache's schema and comparisons against
the columns' types, so a typo fails at once, naming the columns there are.

Nulls follow SQL: a comparison with a null value is null, and a row is selected only where the
whole expression is true. `passed` therefore drops error rows (their `passed` is null), and so do
`not passed` and `lpips < 0.2`; `status = 'error'` or `passed or status = 'error'` selects them. A
column null in every row (a score computed without its weights) can only be tested with `is [not]
null`: `refuse_null_columns` refuses any other use (never true, it would quietly select nothing).
Nothing is evaluated in Python: the result is a `pyarrow.compute.Expression`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.cache.where_syntax import (
    Column,
    Compare,
    In,
    IsNull,
    Literal,
    Logic,
    Node,
    Not,
    WhereError,
    parse_syntax,
)

__all__ = ["WhereError", "parse_where", "refuse_null_columns", "criteria", "where_columns", "canonical_where"]


# Types, as far as the language cares.
_BOOL, _NUMBER, _STRING, _OTHER = "boolean", "number", "string", "other"


def _kind_of_type(data_type: pa.DataType) -> str:
    if pa.types.is_boolean(data_type):
        return _BOOL
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return _NUMBER
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return _STRING
    if pa.types.is_dictionary(data_type):
        return _kind_of_type(data_type.value_type)
    return _OTHER


def _kind_of_value(value: object) -> str:
    if isinstance(value, bool):
        return _BOOL
    return _STRING if isinstance(value, str) else _NUMBER


class _Checker:
    """Checks names and types against the schema, then builds the pyarrow expression."""

    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.text = text
        self.schema = schema

    def _fail(self, message: str, node: Node) -> None:
        raise WhereError(message, self.text, node.start)

    def _snippet(self, node: Node) -> str:
        return self.text[node.start:node.end]

    def predicate(self, node: Node) -> pc.Expression:
        expression, kind = self.build(node)
        if kind != _BOOL:
            self._fail(f"{self._snippet(node)!r} is a {kind}, not a condition; compare it (e.g. "
                       f"{self._snippet(node)} > 0) or test it with 'is null'", node)
        if isinstance(node, Column):
            # A bare boolean column, spelled as a comparison: row-group statistics can then rule groups out.
            return expression == pc.scalar(True)
        return expression

    def build(self, node: Node) -> tuple[pc.Expression, str]:
        if isinstance(node, Column):
            return self._column(node)
        if isinstance(node, Literal):
            return pc.scalar(node.value), _kind_of_value(node.value)
        if isinstance(node, Logic):
            parts = [self.predicate(part) for part in node.parts]
            combined = parts[0]
            for part in parts[1:]:
                # `&` and `|` are Kleene and/or: null and false is false, null or true is true.
                combined = combined & part if node.op == "and" else combined | part
            return combined, _BOOL
        if isinstance(node, Not):
            return ~self.predicate(node.operand), _BOOL
        if isinstance(node, IsNull):
            operand, _ = self.build(node.operand)
            return (operand.is_valid() if node.negated else operand.is_null()), _BOOL
        if isinstance(node, Compare):
            return self._compare(node), _BOOL
        if isinstance(node, In):
            return self._in(node), _BOOL
        raise AssertionError(f"unknown node {node!r}")

    def _column(self, node: Column) -> tuple[pc.Expression, str]:
        if node.name not in self.schema.names:
            close = difflib.get_close_matches(node.name, self.schema.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self._fail(f"unknown column {node.name!r}{hint}; the columns are: {', '.join(self.schema.names)}", node)
        return pc.field(node.name), _kind_of_type(self.schema.field(node.name).type)

    def _typed_literal(self, literal: Node, other: Node) -> pc.Expression | None:
        """A number compared with a floating-point column takes the column's type, so `psnr >= 30.1`
        keeps a stored float32 30.1 (which is below the float64 30.1)."""
        if isinstance(literal, Literal) and isinstance(other, Column) and other.name in self.schema.names:
            column_type = self.schema.field(other.name).type
            if pa.types.is_floating(column_type) and _kind_of_value(literal.value) == _NUMBER:
                return pc.scalar(pa.scalar(literal.value, column_type))
        return None

    def _compare(self, node: Compare) -> pc.Expression:
        left, left_kind = self.build(node.left)
        right, right_kind = self.build(node.right)
        typed_left, typed_right = self._typed_literal(node.left, node.right), self._typed_literal(node.right, node.left)
        left = left if typed_left is None else typed_left
        right = right if typed_right is None else typed_right
        for side, kind in ((node.left, left_kind), (node.right, right_kind)):
            if kind == _OTHER:
                self._fail(f"{self._snippet(side)!r} cannot be compared (binary or list column); "
                           "only 'is null' / 'is not null' apply to it", side)
        if left_kind != right_kind:
            self._fail(f"cannot compare {self._snippet(node.left)!r} (a {left_kind}) with "
                       f"{self._snippet(node.right)!r} (a {right_kind})", node)
        if left_kind == _BOOL and node.op not in ("=", "!="):
            self._fail(f"booleans compare only with = or !=, not {node.op}", node)
        return {
            "<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right,
            "=": left == right, "!=": left != right,
        }[node.op]

    def _in(self, node: In) -> pc.Expression:
        operand, kind = self.build(node.operand)
        if kind in (_OTHER, _BOOL):
            self._fail(f"'in' needs a number or string operand, not a {kind}", node.operand)
        for value in node.values:
            if _kind_of_value(value.value) != kind:
                self._fail(f"{self._snippet(value)} is not a {kind}, as {self._snippet(node.operand)!r} is", value)
        column_type = self.schema.field(node.operand.name).type if isinstance(node.operand, Column) else None
        floating = column_type is not None and pa.types.is_floating(column_type)
        values = pa.array([value.value for value in node.values], type=column_type if floating else None)
        # A null value is neither in nor out of the list, as in SQL.
        member = pc.if_else(operand.is_valid(), pc.is_in(operand, value_set=values), pa.scalar(None, pa.bool_()))
        return ~member if node.negated else member


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """The pyarrow expression for `text`, checked against `schema` (column names and types).

    Raises `WhereError` (a ValueError) whose message shows where the problem is.
    """
    return _Checker(text, schema).predicate(parse_syntax(text))


def refuse_null_columns(text: str, null_columns: Mapping[str, str]) -> None:
    """Raises `WhereError` where `text` uses the value of a column of `null_columns` (column → why it
    is null in every row): a comparison, `in` or bare boolean on it is never true, so a criterion on it
    would quietly select nothing. `COLUMN is [not] null` stays allowed: it is a fair question."""

    def visit(node: Node, tested_for_null: bool) -> None:
        if isinstance(node, Column) and node.name in null_columns and not tested_for_null:
            raise WhereError(
                f"{node.name!r} is null in every row of the cache ({null_columns[node.name]}), so no condition "
                f"on its value is true; test it with '{node.name} is null' or '{node.name} is not null'",
                text, node.start)
        for child in _children(node):
            visit(child, isinstance(node, IsNull))

    visit(parse_syntax(text), False)


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, Logic) and node.op == "and":
        return [leaf for part in node.parts for leaf in _conjuncts(part)]
    return [node]


def criteria(text: str) -> list[str]:
    """The top-level `and`-ed conditions of `text`, each as source text that parses on its own.

    `passed and (lpips < 0.2 and psnr > 30)` gives `["passed", "lpips < 0.2", "psnr > 30"]`; an
    `or` at the top gives the whole expression as one criterion.
    """
    tree = parse_syntax(text)
    return [text[part.start:part.end] for part in _conjuncts(tree)]


def where_columns(text: str) -> list[str]:
    """The columns `text` refers to, in order of first use (for reading only what a filter needs)."""
    names: list[str] = []

    def visit(node: Node) -> None:
        if isinstance(node, Column):
            if node.name not in names:
                names.append(node.name)
        for child in _children(node):
            visit(child)

    visit(parse_syntax(text))
    return names


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Compare):
        return node.left, node.right
    if isinstance(node, (IsNull, In, Not)):
        return (node.operand,)
    if isinstance(node, Logic):
        return node.parts
    return ()


def canonical_where(text: str) -> str:
    """One spelling per expression tree (keywords lower case, single spaces, needed parentheses only,
    `==`→`=`, `<>`→`!=`), so `PASSED AND lpips<0.2` and `passed and lpips < 0.2` are one filter."""
    return _render(parse_syntax(text), None)


_PRECEDENCE = {None: 0, "or": 1, "and": 2, "not": 3, "cmp": 4}


def _render(node: Node, parent: str | None) -> str:
    if isinstance(node, Column):
        return node.name
    if isinstance(node, Literal):
        return _render_literal(node.value)
    if isinstance(node, Logic):
        rendered = f" {node.op} ".join(_render(part, node.op) for part in node.parts)
        # and/or are associative: `a and (b and c)` is `a and b and c`.
        return f"({rendered})" if _PRECEDENCE[parent] > _PRECEDENCE[node.op] else rendered
    if isinstance(node, Not):
        return f"not {_render(node.operand, 'not')}"
    if isinstance(node, IsNull):
        return f"{_render(node.operand, 'cmp')} is {'not ' if node.negated else ''}null"
    if isinstance(node, Compare):
        return f"{_render(node.left, 'cmp')} {node.op} {_render(node.right, 'cmp')}"
    if isinstance(node, In):
        values = ", ".join(_render_literal(value.value) for value in node.values)
        return f"{_render(node.operand, 'cmp')} {'not ' if node.negated else ''}in ({values})"
    raise AssertionError(f"unknown node {node!r}")


def _render_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)
