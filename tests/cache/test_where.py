"""The `where` language: what it selects (SQL null semantics), what it refuses and how it says so."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.cache.schema import SCHEMA
from pipeline.cache.where import (
    WhereError,
    canonical_where,
    criteria,
    parse_where,
    refuse_null_columns,
    where_columns,
)

# Rows 0-2 are ok clips, row 3 an error row (null scores and passed), row 4 an ok clip with a null lpips.
TABLE = pa.table({
    "id": pa.array([0, 1, 2, 3, 4], pa.int32()),
    "status": ["ok", "ok", "ok", "error", "ok"],
    "error": [None, None, None, "cannot decode video", None],
    "caption": ["a cat", "it's a dog", None, "x", "a bird"],
    "psnr": pa.array([31.5, 25.0, 40.0, None, 33.0], pa.float32()),
    "lpips": pa.array([0.1, 0.3, 0.05, None, None], pa.float32()),
    "disc_score": pa.array([-0.5, 0.2, -2e-3, None, 0.0], pa.float32()),
    "clip_index": pa.array([0, 1, 0, -1, 2], pa.int32()),
    "passed": [True, False, True, None, True],
    "latent": pa.array([b"\x00", b"\x01", b"\x02", None, b"\x03"], pa.large_binary()),
    "latent_shape": pa.array([[1], [1], [1], None, [1]], pa.list_(pa.int32())),
})


def selected(text: str) -> list[int]:
    expression = parse_where(text, TABLE.schema)
    assert isinstance(expression, pc.Expression)
    return TABLE.filter(expression).column("id").to_pylist()


@pytest.mark.parametrize("text, ids", [
    ("passed", [0, 2, 4]),
    ("not passed", [1]),  # the error row's passed is null: neither passed nor not passed
    ("passed = true", [0, 2, 4]),
    ("passed == false", [1]),
    ("passed != true", [1]),
    ("psnr > 31.5", [2, 4]),
    ("psnr >= 31.5", [0, 2, 4]),
    ("psnr < 31.5", [1]),
    ("psnr <= 31.5", [0, 1]),
    ("psnr = 25", [1]),
    ("psnr == 25.0", [1]),
    ("psnr != 25", [0, 2, 4]),
    ("psnr <> 25", [0, 2, 4]),
    ("lpips < 0.2", [0, 2]),
    ("not lpips < 0.2", [1]),
    ("disc_score > -0.1", [1, 2, 4]),
    ("disc_score >= -2e-3", [1, 2, 4]),
    ("disc_score < -1.5E-3", [0, 2]),
    ("31.5 <= psnr", [0, 2, 4]),
    ("psnr > lpips", [0, 1, 2]),
    ("status = 'error'", [3]),
    ('status = "ok" and clip_index = 0', [0, 2]),
    ("caption = 'it''s a dog'", [1]),
    ('caption = "it\'s a dog"', [1]),
    ("caption is null", [2]),
    ("caption is not null", [0, 1, 3, 4]),  # error rows are selected when the expression says so
    ("lpips is null", [3, 4]),
    ("latent is null", [3]),
    ("latent_shape is not null", [0, 1, 2, 4]),
    ("clip_index in (0, 2)", [0, 2, 4]),
    ("clip_index not in (0, 2)", [1, 3]),
    ("lpips in (0.3, 0.05)", [1, 2]),
    ("lpips not in (0.3)", [0, 2]),  # null lpips: neither in nor out
    ("status in ('error')", [3]),
    ("passed or status = 'error'", [0, 2, 3, 4]),
    ("passed and lpips < 0.2", [0, 2]),
    ("passed and (lpips < 0.2 or lpips is null)", [0, 2, 4]),
    ("psnr > 30 or psnr < 26 and passed", [0, 2, 4]),  # and binds tighter than or
    ("(psnr > 30 or psnr < 26) and passed", [0, 2, 4]),
    ("(psnr > 30 or psnr < 26) and not passed", [1]),
    ("not passed or psnr > 35", [1, 2]),  # not binds tighter than or
    ("not (passed or status = 'error')", [1]),
    ("not not passed", [0, 2, 4]),
    ("passed AND psnr > 0", [0, 2, 4]),
    ("Not passed Or status = 'error'", [1, 3]),
    ("true", [0, 1, 2, 3, 4]),
    ("false", []),
    ("((passed))", [0, 2, 4]),
    ("  passed\n and\tpsnr>30  ", [0, 2, 4]),
])
def test_selects_as_sql_would(text, ids):
    assert selected(text) == ids


@pytest.mark.parametrize("text, message, column", [
    ("lpip < 0.2", "unknown column 'lpip' (did you mean 'lpips'?)", 0),
    ("passed and nonsense", "unknown column 'nonsense'", 11),
    ("psnr", "'psnr' is a number, not a condition", 0),
    ("passed and caption", "'caption' is a string, not a condition", 11),
    ("status < 3", "cannot compare 'status' (a string) with '3' (a number)", 0),
    ("psnr = 'high'", "cannot compare 'psnr' (a number) with \"'high'\" (a string)", 0),
    ("passed = 1", "cannot compare 'passed' (a boolean) with '1' (a number)", 0),
    ("passed > false", "booleans compare only with = or !=", 0),
    ("latent = 1", "'latent' cannot be compared", 0),
    ("latent_shape > 0", "'latent_shape' cannot be compared", 0),
    ("passed = null", "write 'COLUMN is null'", 9),
    ("psnr is 3", "expected 'null' after 'is'", 8),
    ("psnr in 3", "expected '(' to open the list", 8),
    ("psnr in (1, 'a')", "'a' is not a number", 12),
    ("passed in (true)", "'in' needs a number or string operand", 0),
    ("psnr in (psnr)", "expected a column, a number", 9),
    ("passed and", "expected a column, a number, a quoted string, true or false, found the end", 10),
    ("(passed", "expected ')', found the end", 7),
    ("passed)", "expected 'and', 'or' or the end of the expression, found ')'", 6),
    ("passed passed", "found 'passed'", 7),
    ("psnr > 'x", "unterminated string", 7),
    ("psnr @ 3", "unexpected character '@'", 5),
    ("psnr > - x", "expected a number after '-'", 9),
    ("psnr >", "found the end", 6),
    ("and passed", "found 'and'", 0),
    ("__import__('os').system('true')", "unexpected character '.'", 16),
    ("__import__('os')", "found '('", 10),
    ("psnr.real > 0", "unexpected character '.'", 4),
    ("lambda: 1", "unexpected character ':'", 6),
    ("psnr > 1; drop", "unexpected character ';'", 8),
])
def test_refuses_with_a_pointed_message(text, message, column):
    with pytest.raises(WhereError) as caught:
        parse_where(text, TABLE.schema)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("where: ") and message in lines[0], lines[0]
    assert lines[1] == f"  {text}"
    assert lines[2] == "  " + " " * column + "^"


def test_a_number_compares_with_a_float32_column_as_written():
    # 30.1 is not a float32; compared as written in the column's type, psnr >= 30.1 keeps a stored 30.1.
    table = pa.table({"psnr": pa.array([30.1, 30.0], pa.float32())})
    assert table.filter(parse_where("psnr >= 30.1", table.schema)).num_rows == 1
    assert table.filter(parse_where("psnr = 30.1", table.schema)).num_rows == 1
    assert table.filter(parse_where("30.1 <= psnr", table.schema)).num_rows == 1
    assert table.filter(parse_where("psnr in (30.1)", table.schema)).num_rows == 1


def test_unknown_column_lists_the_schema_columns():
    with pytest.raises(WhereError) as caught:
        parse_where("lpips < 0.2 and clipscore > 3", SCHEMA)
    message = str(caught.value)
    assert "unknown column 'clipscore'" in message
    assert "the columns are: " + ", ".join(SCHEMA.names) in message


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_expression(text):
    with pytest.raises(WhereError, match="the expression is empty"):
        parse_where(text, SCHEMA)


def test_a_where_error_is_a_value_error():
    assert issubclass(WhereError, ValueError)
    with pytest.raises(TypeError):
        parse_where(None, SCHEMA)  # type: ignore[arg-type]


def test_every_contract_column_type_is_usable():
    expression = parse_where(
        "key != '' and clip_index >= 0 and fps > 0 and height = width and caption is not null and "
        "latent_dtype in ('float16', 'bfloat16') and latent_mean > -1e9 and passed and preview is null",
        SCHEMA)
    assert isinstance(expression, pc.Expression)


@pytest.mark.parametrize("text, expected", [
    ("passed", ["passed"]),
    ("passed and lpips < 0.2", ["passed", "lpips < 0.2"]),
    ("passed AND lpips<0.2 and psnr >= 30", ["passed", "lpips<0.2", "psnr >= 30"]),
    ("passed and (lpips < 0.2 and psnr > 30)", ["passed", "lpips < 0.2", "psnr > 30"]),
    ("(passed and lpips < 0.2) and psnr > 30", ["passed", "lpips < 0.2", "psnr > 30"]),
    ("passed and (lpips < 0.2 or psnr > 30)", ["passed", "(lpips < 0.2 or psnr > 30)"]),
    ("passed or lpips < 0.2 and psnr > 30", ["passed or lpips < 0.2 and psnr > 30"]),
    ("not (passed and psnr > 3) and status = 'ok'", ["not (passed and psnr > 3)", "status = 'ok'"]),
    ("caption = 'cats and dogs' and passed", ["caption = 'cats and dogs'", "passed"]),
    ("clip_index in (0, 1) and (psnr) > 3", ["clip_index in (0, 1)", "(psnr) > 3"]),
])
def test_criteria_are_the_top_level_conjuncts(text, expected):
    assert criteria(text) == expected
    # Each criterion stands alone, and together they select what the whole expression does.
    combined = None
    for part in expected:
        expression = parse_where(part, SCHEMA)
        combined = expression if combined is None else combined & expression
    whole = parse_where(text, SCHEMA)
    assert isinstance(combined, pc.Expression) and isinstance(whole, pc.Expression)


def test_criteria_select_together_what_the_expression_selects():
    text = "passed and (lpips < 0.2 or lpips is null) and psnr > 30"
    rows = [set(selected(part)) for part in criteria(text)]
    assert set.intersection(*rows) == set(selected(text)) == {0, 2, 4}


def test_canonical_form_ignores_spelling():
    variants = ["passed and lpips < 0.2", "passed AND lpips<0.2",
                "(passed) and (lpips < 0.2)", "passed  AND  lpips <0.2"]
    assert {canonical_where(text) for text in variants} == {"passed and lpips < 0.2"}
    assert canonical_where("a <> 1 or b == 'x''y' and not (c or d)") == "a != 1 or b = 'x''y' and not (c or d)"
    assert canonical_where("(a or b) and c") == "(a or b) and c"
    assert canonical_where("a and (b and c)") == "a and b and c"
    assert canonical_where("x not in (1, 2.5) and y is not null") == "x not in (1, 2.5) and y is not null"
    assert canonical_where("passed") != canonical_where("not passed")
    # The canonical text means the same thing.
    for text in ["passed and (lpips < 0.2 or lpips is null)", "not (passed or status = 'error')", "psnr <> 25"]:
        assert selected(canonical_where(text)) == selected(text)


def test_where_columns():
    assert where_columns("passed and (lpips < 0.2 or psnr > lpips) and caption is not null") == [
        "passed", "lpips", "psnr", "caption"]
    assert where_columns("true") == []


NULL_COLUMNS = {"lpips": "no LPIPS weights: missing the calibrated heads (--lpips-heads)",
                "passed": "it holds only nulls"}


@pytest.mark.parametrize("text, name", [
    ("lpips < 0.2", "lpips"),
    ("psnr > 30 and lpips < 0.2", "lpips"),
    ("psnr > 30 or not (lpips >= 0.5)", "lpips"),
    ("psnr > lpips", "lpips"),
    ("lpips in (0.1, 0.2)", "lpips"),
    ("lpips not in (0.1)", "lpips"),
    ("(lpips < 0.2) is null", "lpips"),  # the value is compared before the test for null
    ("passed", "passed"),
    ("psnr > 30 and not passed", "passed"),
    ("passed = true", "passed"),
])
def test_a_column_null_in_every_row_is_refused_unless_tested_for_null(text, name):
    with pytest.raises(WhereError) as caught:
        refuse_null_columns(text, NULL_COLUMNS)
    lines = str(caught.value).splitlines()
    assert lines[0] == (f"where: {name!r} is null in every row of the cache ({NULL_COLUMNS[name]}), so no condition "
                        f"on its value is true; test it with '{name} is null' or '{name} is not null'")
    assert lines[1:] == [f"  {text}", "  " + " " * text.index(name) + "^"]


@pytest.mark.parametrize("text", [
    "lpips is null", "lpips is not null and psnr > 30", "(lpips) is null or passed is not null",
    "psnr > 30 and clip_index in (0, 1)", "not (lpips is null)",
])
def test_tests_for_null_and_other_columns_are_allowed(text):
    refuse_null_columns(text, NULL_COLUMNS)


def test_a_cache_without_null_columns_refuses_nothing():
    refuse_null_columns("lpips < 0.2 and passed", {})
