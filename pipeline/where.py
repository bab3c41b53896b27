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
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["WhereError", "parse_where", "refuse_null_columns", "criteria", "where_columns", "canonical_where"]


class WhereError(ValueError):
    """A `where` expression that does not parse or does not fit the schema; the message points at it."""

    def __init__(self, message: str, text: str, position: int | None = None) -> None:
        where = f"where: {message}"
        if position is not None:
            where += f"\n  {text}\n  {' ' * position}^"
        super().__init__(where)


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<op><=|>=|<>|!=|==|=|<|>)
  | (?P<punct>[(),-])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "is", "null", "true", "false", "in"}
_COMPARISONS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": "=", "==": "=", "!=": "!=", "<>": "!="}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, op, punct, name, keyword, end
    text: str
    start: int
    end: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] in "'\"":
                raise WhereError("unterminated string", text, position)
            raise WhereError(f"unexpected character {text[position]!r}", text, position)
        kind = match.lastgroup
        if kind != "space":
            value = match.group()
            if kind == "name" and value.lower() in _KEYWORDS:
                kind, value = "keyword", value.lower()
            tokens.append(_Token(kind, value, match.start(), match.end()))
        position = match.end()
    tokens.append(_Token("end", "", len(text), len(text)))
    return tokens


# The syntax tree. Every node keeps its span in the source text, so `criteria` can quote it.
@dataclass(frozen=True)
class _Node:
    start: int
    end: int


@dataclass(frozen=True)
class _Column(_Node):
    name: str


@dataclass(frozen=True)
class _Literal(_Node):
    value: object  # int, float, str or bool


@dataclass(frozen=True)
class _Compare(_Node):
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _IsNull(_Node):
    operand: _Node
    negated: bool


@dataclass(frozen=True)
class _In(_Node):
    operand: _Node
    values: tuple[_Literal, ...]
    negated: bool


@dataclass(frozen=True)
class _Not(_Node):
    operand: _Node


@dataclass(frozen=True)
class _Logic(_Node):
    op: str  # "and" / "or"
    parts: tuple[_Node, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.token
        self.index += 1
        return token

    def _accept(self, kind: str, text: str | None = None) -> _Token | None:
        if self.token.kind == kind and (text is None or self.token.text == text):
            return self._advance()
        return None

    def _expect(self, kind: str, text: str, what: str) -> _Token:
        token = self._accept(kind, text)
        if token is None:
            self._fail(f"expected {what}")
        return token

    def _fail(self, message: str) -> None:
        found = "the end of the expression" if self.token.kind == "end" else repr(self.token.text)
        raise WhereError(f"{message}, found {found}", self.text, self.token.start)

    def parse(self) -> _Node:
        if self.token.kind == "end":
            raise WhereError("the expression is empty", self.text)
        node = self._or()
        if self.token.kind != "end":
            self._fail("expected 'and', 'or' or the end of the expression")
        return node

    def _logic(self, op: str, operand) -> _Node:
        parts = [operand()]
        while self._accept("keyword", op):
            parts.append(operand())
        if len(parts) == 1:
            return parts[0]
        return _Logic(parts[0].start, parts[-1].end, op, tuple(parts))

    def _or(self) -> _Node:
        return self._logic("or", self._and)

    def _and(self) -> _Node:
        return self._logic("and", self._not)

    def _not(self) -> _Node:
        keyword = self._accept("keyword", "not")
        if keyword is None:
            return self._predicate()
        operand = self._not()
        return _Not(keyword.start, operand.end, operand)

    def _predicate(self) -> _Node:
        left = self._operand()
        if self.token.kind == "op":
            op = _COMPARISONS[self._advance().text]
            right = self._operand()
            return _Compare(left.start, right.end, op, left, right)
        if self._accept("keyword", "is"):
            negated = self._accept("keyword", "not") is not None
            end = self._expect("keyword", "null", "'null' after 'is'" + ("" if negated else " or 'is not'")).end
            return _IsNull(left.start, end, left, negated)
        if self.token.kind == "keyword" and self.token.text in ("in", "not"):
            negated = self._accept("keyword", "not") is not None
            self._expect("keyword", "in", "'in' after 'not'")
            self._expect("punct", "(", "'(' to open the list after 'in'")
            values = [self._literal()]
            while self._accept("punct", ","):
                values.append(self._literal())
            end = self._expect("punct", ")", "',' or ')' in the list after 'in'").end
            return _In(left.start, end, left, tuple(values), negated)
        return left

    def _operand(self) -> _Node:
        opening = self._accept("punct", "(")
        if opening is not None:
            inner = self._or()
            closing = self._expect("punct", ")", "')'")
            # The span takes in the parentheses, so quoting any node's span gives text that parses.
            return replace(inner, start=opening.start, end=closing.end)
        if self.token.kind == "name":
            token = self._advance()
            return _Column(token.start, token.end, token.text)
        return self._literal()

    def _literal(self) -> _Literal:
        token = self.token
        if token.kind == "punct" and token.text == "-":
            self._advance()
            if self.token.kind != "number":
                self._fail("expected a number after '-'")
            number = self._advance()
            return _Literal(token.start, number.end, -_number(number.text))
        if token.kind == "number":
            self._advance()
            return _Literal(token.start, token.end, _number(token.text))
        if token.kind == "string":
            self._advance()
            quote = token.text[0]
            return _Literal(token.start, token.end, token.text[1:-1].replace(quote * 2, quote))
        if token.kind == "keyword" and token.text in ("true", "false"):
            self._advance()
            return _Literal(token.start, token.end, token.text == "true")
        if token.kind == "keyword" and token.text == "null":
            raise WhereError("null is not a value to compare with: write 'COLUMN is null' or 'COLUMN is not null'",
                             self.text, token.start)
        self._fail("expected a column, a number, a quoted string, true or false")
        raise AssertionError  # unreachable: _fail raises


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse(text: str) -> _Node:
    if not isinstance(text, str):
        raise TypeError(f"a where expression is a string, not {type(text).__name__}")
    return _Parser(text).parse()


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

    def _fail(self, message: str, node: _Node) -> None:
        raise WhereError(message, self.text, node.start)

    def _snippet(self, node: _Node) -> str:
        return self.text[node.start:node.end]

    def predicate(self, node: _Node) -> pc.Expression:
        expression, kind = self.build(node)
        if kind != _BOOL:
            self._fail(f"{self._snippet(node)!r} is a {kind}, not a condition; compare it (e.g. "
                       f"{self._snippet(node)} > 0) or test it with 'is null'", node)
        if isinstance(node, _Column):
            # A bare boolean column, spelled as a comparison: row-group statistics can then rule groups out.
            return expression == pc.scalar(True)
        return expression

    def build(self, node: _Node) -> tuple[pc.Expression, str]:
        if isinstance(node, _Column):
            return self._column(node)
        if isinstance(node, _Literal):
            return pc.scalar(node.value), _kind_of_value(node.value)
        if isinstance(node, _Logic):
            parts = [self.predicate(part) for part in node.parts]
            combined = parts[0]
            for part in parts[1:]:
                # `&` and `|` are Kleene and/or: null and false is false, null or true is true.
                combined = combined & part if node.op == "and" else combined | part
            return combined, _BOOL
        if isinstance(node, _Not):
            return ~self.predicate(node.operand), _BOOL
        if isinstance(node, _IsNull):
            operand, _ = self.build(node.operand)
            return (operand.is_valid() if node.negated else operand.is_null()), _BOOL
        if isinstance(node, _Compare):
            return self._compare(node), _BOOL
        if isinstance(node, _In):
            return self._in(node), _BOOL
        raise AssertionError(f"unknown node {node!r}")

    def _column(self, node: _Column) -> tuple[pc.Expression, str]:
        if node.name not in self.schema.names:
            close = difflib.get_close_matches(node.name, self.schema.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self._fail(f"unknown column {node.name!r}{hint}; the columns are: {', '.join(self.schema.names)}", node)
        return pc.field(node.name), _kind_of_type(self.schema.field(node.name).type)

    def _typed_literal(self, literal: _Node, other: _Node) -> pc.Expression | None:
        """A number compared with a floating-point column takes the column's type, so `psnr >= 30.1`
        keeps a stored float32 30.1 (which is below the float64 30.1)."""
        if isinstance(literal, _Literal) and isinstance(other, _Column) and other.name in self.schema.names:
            column_type = self.schema.field(other.name).type
            if pa.types.is_floating(column_type) and _kind_of_value(literal.value) == _NUMBER:
                return pc.scalar(pa.scalar(literal.value, column_type))
        return None

    def _compare(self, node: _Compare) -> pc.Expression:
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

    def _in(self, node: _In) -> pc.Expression:
        operand, kind = self.build(node.operand)
        if kind in (_OTHER, _BOOL):
            self._fail(f"'in' needs a number or string operand, not a {kind}", node.operand)
        for value in node.values:
            if _kind_of_value(value.value) != kind:
                self._fail(f"{self._snippet(value)} is not a {kind}, as {self._snippet(node.operand)!r} is", value)
        column_type = self.schema.field(node.operand.name).type if isinstance(node.operand, _Column) else None
        floating = column_type is not None and pa.types.is_floating(column_type)
        values = pa.array([value.value for value in node.values], type=column_type if floating else None)
        # A null value is neither in nor out of the list, as in SQL.
        member = pc.if_else(operand.is_valid(), pc.is_in(operand, value_set=values), pa.scalar(None, pa.bool_()))
        return ~member if node.negated else member


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """The pyarrow expression for `text`, checked against `schema` (column names and types).

    Raises `WhereError` (a ValueError) whose message shows where the problem is.
    """
    return _Checker(text, schema).predicate(_parse(text))


def refuse_null_columns(text: str, null_columns: Mapping[str, str]) -> None:
    """Raises `WhereError` where `text` uses the value of a column of `null_columns` (column → why it
    is null in every row): a comparison, `in` or bare boolean on it is never true, so a criterion on it
    would quietly select nothing. `COLUMN is [not] null` stays allowed: it is a fair question."""

    def visit(node: _Node, tested_for_null: bool) -> None:
        if isinstance(node, _Column) and node.name in null_columns and not tested_for_null:
            raise WhereError(
                f"{node.name!r} is null in every row of the cache ({null_columns[node.name]}), so no condition "
                f"on its value is true; test it with '{node.name} is null' or '{node.name} is not null'",
                text, node.start)
        for child in _children(node):
            visit(child, isinstance(node, _IsNull))

    visit(_parse(text), False)


def _conjuncts(node: _Node) -> list[_Node]:
    if isinstance(node, _Logic) and node.op == "and":
        return [leaf for part in node.parts for leaf in _conjuncts(part)]
    return [node]


def criteria(text: str) -> list[str]:
    """The top-level `and`-ed conditions of `text`, each as source text that parses on its own.

    `passed and (lpips < 0.2 and psnr > 30)` gives `["passed", "lpips < 0.2", "psnr > 30"]`; an
    `or` at the top gives the whole expression as one criterion.
    """
    tree = _parse(text)
    return [text[part.start:part.end] for part in _conjuncts(tree)]


def where_columns(text: str) -> list[str]:
    """The columns `text` refers to, in order of first use (for reading only what a filter needs)."""
    names: list[str] = []

    def visit(node: _Node) -> None:
        if isinstance(node, _Column):
            if node.name not in names:
                names.append(node.name)
        for child in _children(node):
            visit(child)

    visit(_parse(text))
    return names


def _children(node: _Node) -> tuple[_Node, ...]:
    if isinstance(node, _Compare):
        return node.left, node.right
    if isinstance(node, (_IsNull, _In, _Not)):
        return (node.operand,)
    if isinstance(node, _Logic):
        return node.parts
    return ()


def canonical_where(text: str) -> str:
    """One spelling per expression tree (keywords lower case, single spaces, needed parentheses only,
    `==`→`=`, `<>`→`!=`), so `PASSED AND lpips<0.2` and `passed and lpips < 0.2` are one filter."""
    return _render(_parse(text), None)


_PRECEDENCE = {None: 0, "or": 1, "and": 2, "not": 3, "cmp": 4}


def _render(node: _Node, parent: str | None) -> str:
    if isinstance(node, _Column):
        return node.name
    if isinstance(node, _Literal):
        return _render_literal(node.value)
    if isinstance(node, _Logic):
        rendered = f" {node.op} ".join(_render(part, node.op) for part in node.parts)
        # and/or are associative: `a and (b and c)` is `a and b and c`.
        return f"({rendered})" if _PRECEDENCE[parent] > _PRECEDENCE[node.op] else rendered
    if isinstance(node, _Not):
        return f"not {_render(node.operand, 'not')}"
    if isinstance(node, _IsNull):
        return f"{_render(node.operand, 'cmp')} is {'not ' if node.negated else ''}null"
    if isinstance(node, _Compare):
        return f"{_render(node.left, 'cmp')} {node.op} {_render(node.right, 'cmp')}"
    if isinstance(node, _In):
        values = ", ".join(_render_literal(value.value) for value in node.values)
        return f"{_render(node.operand, 'cmp')} {'not ' if node.negated else ''}in ({values})"
    raise AssertionError(f"unknown node {node!r}")


def _render_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)
