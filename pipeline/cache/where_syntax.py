"""The `where` language's syntax: tokens, the expression tree, and a recursive-descent parser.

Types and names are checked against a cache's schema in `pipeline.cache.where`, which also holds
the grammar's documentation and the public functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


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
class Node:
    start: int
    end: int


@dataclass(frozen=True)
class Column(Node):
    name: str


@dataclass(frozen=True)
class Literal(Node):
    value: object  # int, float, str or bool


@dataclass(frozen=True)
class Compare(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class IsNull(Node):
    operand: Node
    negated: bool


@dataclass(frozen=True)
class In(Node):
    operand: Node
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class Not(Node):
    operand: Node


@dataclass(frozen=True)
class Logic(Node):
    op: str  # "and" / "or"
    parts: tuple[Node, ...]


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

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise WhereError("the expression is empty", self.text)
        node = self._or()
        if self.token.kind != "end":
            self._fail("expected 'and', 'or' or the end of the expression")
        return node

    def _logic(self, op: str, operand) -> Node:
        parts = [operand()]
        while self._accept("keyword", op):
            parts.append(operand())
        if len(parts) == 1:
            return parts[0]
        return Logic(parts[0].start, parts[-1].end, op, tuple(parts))

    def _or(self) -> Node:
        return self._logic("or", self._and)

    def _and(self) -> Node:
        return self._logic("and", self._not)

    def _not(self) -> Node:
        keyword = self._accept("keyword", "not")
        if keyword is None:
            return self._predicate()
        operand = self._not()
        return Not(keyword.start, operand.end, operand)

    def _predicate(self) -> Node:
        left = self._operand()
        if self.token.kind == "op":
            op = _COMPARISONS[self._advance().text]
            right = self._operand()
            return Compare(left.start, right.end, op, left, right)
        if self._accept("keyword", "is"):
            negated = self._accept("keyword", "not") is not None
            end = self._expect("keyword", "null", "'null' after 'is'" + ("" if negated else " or 'is not'")).end
            return IsNull(left.start, end, left, negated)
        if self.token.kind == "keyword" and self.token.text in ("in", "not"):
            negated = self._accept("keyword", "not") is not None
            self._expect("keyword", "in", "'in' after 'not'")
            self._expect("punct", "(", "'(' to open the list after 'in'")
            values = [self._literal()]
            while self._accept("punct", ","):
                values.append(self._literal())
            end = self._expect("punct", ")", "',' or ')' in the list after 'in'").end
            return In(left.start, end, left, tuple(values), negated)
        return left

    def _operand(self) -> Node:
        opening = self._accept("punct", "(")
        if opening is not None:
            inner = self._or()
            closing = self._expect("punct", ")", "')'")
            # The span takes in the parentheses, so quoting any node's span gives text that parses.
            return replace(inner, start=opening.start, end=closing.end)
        if self.token.kind == "name":
            token = self._advance()
            return Column(token.start, token.end, token.text)
        return self._literal()

    def _literal(self) -> Literal:
        token = self.token
        if token.kind == "punct" and token.text == "-":
            self._advance()
            if self.token.kind != "number":
                self._fail("expected a number after '-'")
            number = self._advance()
            return Literal(token.start, number.end, -_number(number.text))
        if token.kind == "number":
            self._advance()
            return Literal(token.start, token.end, _number(token.text))
        if token.kind == "string":
            self._advance()
            quote = token.text[0]
            return Literal(token.start, token.end, token.text[1:-1].replace(quote * 2, quote))
        if token.kind == "keyword" and token.text in ("true", "false"):
            self._advance()
            return Literal(token.start, token.end, token.text == "true")
        if token.kind == "keyword" and token.text == "null":
            raise WhereError("null is not a value to compare with: write 'COLUMN is null' or 'COLUMN is not null'",
                             self.text, token.start)
        self._fail("expected a column, a number, a quoted string, true or false")
        raise AssertionError  # unreachable: _fail raises


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_syntax(text: str) -> Node:
    if not isinstance(text, str):
        raise TypeError(f"a where expression is a string, not {type(text).__name__}")
    return _Parser(text).parse()
