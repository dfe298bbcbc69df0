"""Property-based tests (hypothesis) of the two parsers every outside value goes through.

- The value parser, against a reference written differently (Python's Decimal with ROUND_HALF_UP):
  for any text at all, both give the same stored integer, MISSING or INVALID.
- The row parser's fast path (one regular expression over the joined row) against the value parser
  applied column by column: rows of canonical values (which take the fast path whole) and rows of
  anything parse the same either way.
- The `countries` query parameter: any text either is refused with a 400 or gives distinct
  upper-case three-letter codes; lists of codes in any case and spacing give those codes.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pisa_pulse.api.charts import BadRequest, parse_countries
from pisa_pulse.engine.values import (
    CNT_VALID,
    COUNTRY_INDEX,
    FIRST_VALUE,
    INVALID,
    MISSING,
    NUMBER_PATTERN,
    VALID_MAX,
    VALID_MIN,
    ColumnRule,
    RowParser,
    column_rules,
    parse_cnt,
    parse_value,
)
from pisa_pulse.sources.schema import CHART_COLUMNS

RULES = column_rules()
CATEGORICAL = next(r for r in RULES if r.codes is not None)


def reference(rule: ColumnRule, text: str | None) -> int:
    """The value rules of values.py, written with Decimal arithmetic instead of string slicing."""
    if text is None or text == "NA":
        return MISSING
    if not re.fullmatch(NUMBER_PATTERN, text, re.ASCII):
        return INVALID
    exact = Decimal(text).scaleb(rule.decimals)
    if rule.codes is not None and exact != exact.to_integral_value():
        return INVALID
    scaled = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if not VALID_MIN <= scaled <= VALID_MAX or not rule.accepts(scaled):
        return INVALID
    return scaled


def numbers(decimals: int) -> st.SearchStrategy[str]:
    """Number-like text: canonical, over-precise, zero-padded, huge, or just past int32."""
    whole = st.integers(min_value=0, max_value=10**12).map(str)
    padded = st.builds(lambda w, z: "0" * z + w, whole, st.integers(0, 3))
    fraction = st.text("0123456789", min_size=1, max_size=decimals + 4)
    return st.builds(
        lambda sign, w, f: f"{sign}{w}" + (f".{f}" if f else ""),
        st.sampled_from(["", "-"]),
        padded,
        st.one_of(st.just(""), fraction),
    )


MESSY = st.one_of(
    st.none(),
    st.just("NA"),
    st.sampled_from(["", " ", "n/a", "-", "+1", "1e3", "512,345", " 512.345", "99", "97", "٣", "１"]),
    st.text(max_size=12),
)


@settings(max_examples=2000)
@given(
    st.sampled_from(RULES).flatmap(
        lambda rule: st.tuples(st.just(rule), st.one_of(numbers(rule.decimals), MESSY))
    )
)
@example((CATEGORICAL, "3.0")).via("a category code with zero decimals")
@example((RULES[1], "-0.00005")).via("rounds away from zero")
@example((RULES[1], "2147483648")).via("just past int32")
def test_the_value_parser_agrees_with_a_decimal_reference(case: tuple[ColumnRule, str | None]) -> None:
    rule, text = case
    assert parse_value(rule, text) == reference(rule, text)


def canonical(rule: ColumnRule) -> st.SearchStrategy[str]:
    """Text at exactly the column's decimals with at most 9 digits: what the fast path takes."""
    limit = 10 ** max(1, 9 - rule.decimals) * rule.scale - 1
    return st.integers(-limit, limit).map(
        lambda n: (
            f"{'-' if n < 0 else ''}{abs(n) // rule.scale}"
            + (f".{abs(n) % rule.scale:0{rule.decimals}d}" if rule.decimals else "")
        )
    )


# Rows the fast path takes whole (canonical text or NA in every column), and rows with anything.
FAST_ROWS = st.tuples(*(st.one_of(canonical(r), st.just("NA")) for r in RULES)).map(list)
ANY_ROWS = st.tuples(*(st.one_of(canonical(r), numbers(r.decimals), MESSY) for r in RULES)).map(list)


@settings(max_examples=400)
@given(
    st.one_of(FAST_ROWS, ANY_ROWS),
    st.one_of(st.sampled_from(sorted(COUNTRY_INDEX)), MESSY),
)
def test_the_fast_row_path_equals_the_value_parser(values: list[str | None], cnt: str | None) -> None:
    row = RowParser("ALB").parse_row(["1", cnt, *values], minute=7)
    assert row[FIRST_VALUE:] == [parse_value(rule, v) for rule, v in zip(RULES, values, strict=True)]
    status, index = parse_cnt(cnt)
    assert row[0] == (index if status == CNT_VALID else COUNTRY_INDEX["ALB"]) and row[1] == 7
    assert len(row) == FIRST_VALUE + len(CHART_COLUMNS) - 2


CODES = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3)


@settings(max_examples=2000)
@given(st.text(max_size=40))
def test_countries_text_is_refused_or_gives_codes(raw: str) -> None:
    try:
        codes = parse_countries(raw)
    except BadRequest as exc:
        assert "countries=" in str(exc) and "\n" not in str(exc)
        return
    assert codes and len(set(codes)) == len(codes)
    assert all(len(c) == 3 and c.isascii() and c.isalpha() and c.isupper() for c in codes)


@settings(max_examples=1000)
@given(st.lists(st.tuples(CODES, st.text(" ", max_size=2), st.text(" ", max_size=2)), min_size=1, max_size=8))
def test_lists_of_codes_in_any_case_and_spacing_parse(parts: list[tuple[str, str, str]]) -> None:
    raw = ",".join(f"{left}{code}{right}" for code, left, right in parts)
    assert parse_countries(raw) == tuple(dict.fromkeys(code.upper() for code, _, _ in parts))
