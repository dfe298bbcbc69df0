"""The engine's pure core: value rules, ledger retraction, checkpoint changes, derived means."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.ledger import Ledger
from pisa_pulse.engine.values import (
    ARRIVAL,
    CNT_INVALID,
    CNT_MISSING,
    CNT_VALID,
    COUNTRY,
    COUNTRY_CODES,
    COUNTRY_INDEX,
    FIRST_VALUE,
    INVALID,
    MISSING,
    NUMERIC_COLUMNS,
    ROW_WIDTH,
    VALID_MIN,
    RowParser,
    column_rules,
    parse_cnt,
    parse_value,
)
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.schema import CHART_COLUMNS, column_names

RULES = {rule.name: rule for rule in column_rules()}
UNCHANGED = object()  # what the capture sends for an unchanged TOASTed column


def test_chart_columns_are_in_both_schemas() -> None:
    assert len(CHART_COLUMNS) == 37 and CHART_COLUMNS[:2] == ("id", "cnt")
    for schema in ("slim", "full"):
        assert set(CHART_COLUMNS) <= set(column_names(schema))


def test_scales_come_from_the_codebook_formats() -> None:
    assert {n: RULES[n].scale for n in ("pv1math", "pv10scie", "belong", "escs", "w_fstuwt", "tmins")} == {
        "pv1math": 1000,
        "pv10scie": 1000,
        "belong": 10_000,
        "escs": 10_000,
        "w_fstuwt": 100_000,
        "tmins": 1,
    }
    assert RULES["durecec"].codes == frozenset(range(9))
    assert RULES["escs"].missing == ((950_000, 990_000),)
    assert RULES["tmins"].missing == ((99_999_995, 99_999_999),)
    assert RULES["pv1math"].missing == () and RULES["pv1math"].codes is None


@pytest.mark.parametrize(
    ("column", "text", "expected"),
    [
        # plausible values, F8.3, no missing codes
        ("pv1math", "512.345", 512_345),
        ("pv1math", "512", 512_000),
        ("pv1math", "0512.345", 512_345),
        ("pv1math", "-0.5", -500),
        ("pv1math", "512.3455", 512_346),  # half away from zero
        ("pv1math", "-512.3455", -512_346),
        ("pv1math", "512.3454999", 512_345),
        ("pv1math", "99", 99_000),  # not a missing code for a PV
        ("pv1math", "2147483.647", 2_147_483_647),  # int32 maximum
        ("pv1math", "2147483.6475", INVALID),  # rounds past it
        ("pv1math", "-2147483.646", -2_147_483_646),  # lowest valid
        ("pv1math", "-2147483.647", INVALID),  # the markers' range
        ("pv1math", "-2147483.648", INVALID),
        ("pv1math", "0" * 5000 + "1", 1000),
        ("pv1math", "1" * 5000, INVALID),
        ("pv1math", "NA", MISSING),
        ("pv1math", None, MISSING),
        ("pv1math", "", INVALID),
        ("pv1math", " 512.345", INVALID),
        ("pv1math", "512.345 ", INVALID),
        ("pv1math", " 512.345 ", INVALID),
        ("pv1math", "n/a", INVALID),
        ("pv1math", "-", INVALID),
        ("pv1math", "512,345", INVALID),
        ("pv1math", "1,5", INVALID),
        ("pv1math", "+512", INVALID),
        ("pv1math", "5e2", INVALID),
        ("pv1math", ".5", INVALID),
        ("pv1math", "5.", INVALID),
        ("pv1math", "na", INVALID),
        ("pv1math", "\u0665\u0661\u0662", INVALID),  # Arabic-Indic digits
        ("pv1math", "512.345\n", INVALID),
        # indices with a user-missing range 95..99, F7.4
        ("escs", "0.1234", 1234),
        ("escs", "-1.23456", -12_346),
        ("escs", "95", INVALID),
        ("escs", "97", INVALID),
        ("escs", "96.5", INVALID),  # inside the range, not a listed code
        ("escs", "99.0000", INVALID),
        ("escs", "94.99994", 949_999),
        ("escs", "94.99995", INVALID),  # rounds to 95.0000
        ("escs", "99.00005", 990_001),
        ("escs", "-95", -950_000),
        ("belong", "98", INVALID),
        ("belong", "1.5", 15_000),
        # TMINS, F8.0, 99999995..99999999
        ("tmins", "1500", 1500),
        ("tmins", "1500.5", 1501),
        ("tmins", "-1500.5", -1501),
        ("tmins", "99999995", INVALID),
        ("tmins", "99999994.5", INVALID),
        ("tmins", "99999994.4", 99_999_994),
        ("tmins", "99999999.5", 100_000_000),
        # DURECEC: exactly one of the codes 0..8
        ("durecec", "0", 0),
        ("durecec", "8", 8),
        ("durecec", "3.0", 3),
        ("durecec", "03", 3),
        ("durecec", "-0", 0),
        ("durecec", "2.5", INVALID),
        ("durecec", "3.01", INVALID),
        ("durecec", "9", INVALID),
        ("durecec", "-1", INVALID),
        ("durecec", "95", INVALID),
        ("durecec", "99", INVALID),
        # the weight, F8.5
        ("w_fstuwt", "15.12345", 1_512_345),
        ("w_fstuwt", "15.123455", 1_512_346),
        ("w_fstuwt", "15.1", 1_510_000),
    ],
)
def test_parse_value(column: str, text: str | None, expected: int) -> None:
    assert parse_value(RULES[column], text) == expected


def _row(cnt: object, **given: object) -> list[object]:
    """A CHART_COLUMNS row: every numeric value canonical and valid unless given."""
    defaults: dict[str, object] = {"durecec": "3", "belong": "0.1000", "escs": "-0.5000", "tmins": "1500"}
    defaults["w_fstuwt"] = "10.00000"
    values: list[object] = ["1", cnt]
    for name in NUMERIC_COLUMNS:
        values.append(given.get(name, defaults.get(name, "500.000")))
    return values


@pytest.mark.parametrize(
    ("cnt", "status", "country"),
    [("ARG", CNT_VALID, "ARG"), ("ALB", CNT_VALID, "ALB"), ("alb", CNT_INVALID, "ALB"),
     (" ARG", CNT_INVALID, "ALB"), ("XXX", CNT_INVALID, "ALB"), ("", CNT_INVALID, "ALB"),
     ("NA", CNT_MISSING, "ALB"), (None, CNT_MISSING, "ALB")],
)  # fmt: skip
def test_cnt_decides_the_country_else_the_source(cnt: str | None, status: int, country: str) -> None:
    assert parse_cnt(cnt)[0] == status
    row = RowParser("ALB").parse_row(_row(cnt), 7)
    assert row[:3] == [COUNTRY_INDEX[country], 7, status]


def test_unknown_source_country_is_refused() -> None:
    with pytest.raises(PisaPulseError, match="unknown source country"):
        RowParser("alb")


MESSY = ["", " 1.5", "1.5 ", "n/a", "-", "512,345", "1,5", "NA", "95", "97", "99999998", "2.5", "9"]
# Canonical text at the edges of the user-missing ranges: decided by the whole-row path, not value by value.
MESSY += ["95.0000", "99.0000", "94.9999", "99.0001", "99999995", "99999999", "99999994", "100000000"]


def _random_text(rng: random.Random, column: str, messy: float) -> str | None:
    if rng.random() < messy:
        return rng.choice([*MESSY, None])
    rule = RULES[column]
    if rule.codes is not None:
        return str(rng.randint(0, 8))
    decimals = rule.decimals + rng.choice([0, 0, 0, 1, 2]) if rng.random() < 0.2 else rule.decimals
    value = rng.uniform(-5, 800) if rule.decimals else rng.randint(-10, 3000)
    return f"{value:.{decimals}f}" if decimals else str(int(value))


def _random_row(rng: random.Random, pk: int, messy: float) -> list[str | None]:
    cnt = rng.choice(["ALB", "ALB", "ARG", "AUS", "alb", "NA", None])
    return [str(pk), cnt, *(_random_text(rng, c, messy) for c in NUMERIC_COLUMNS)]


@pytest.mark.parametrize("messy", [0.0, 0.02, 0.3])
def test_whole_row_parse_agrees_with_value_by_value(messy: float) -> None:
    rng = random.Random(42)
    parser = RowParser("ALB")
    for pk in range(3000):
        values = _random_row(rng, pk, messy)
        expected = [parse_value(rule, values[2 + i]) for i, rule in enumerate(column_rules())]
        assert parser.parse_row(values, 3)[3:] == expected, values


def test_parse_row_needs_all_chart_columns() -> None:
    with pytest.raises(ValueError, match="37"):
        RowParser("ALB").parse_row(["1", "ALB"], 0)


# -- an independent reference: aggregates computed from text with Decimal, not from ledger rows ----------


Totals = dict[str, dict[str, tuple[int, int]]]  # country -> rows, (valid, sum) per index, (Σw, Σw·pv)


def _reference(rows: dict[int, list[str | None]], source: str) -> Totals:
    """Per country: (rows, 0), (valid, sum) per index and (Σw, Σw·pv) per domain, from the texts."""
    result: Totals = {}
    for values in rows.values():
        cnt = values[1]
        country = cnt if cnt is not None and cnt in COUNTRY_INDEX else source
        entry = result.setdefault(country, {"rows": (0, 0)})
        entry["rows"] = (entry["rows"][0] + 1, 0)
        scaled = {name: _reference_value(name, values[CHART_COLUMNS.index(name)]) for name in NUMERIC_COLUMNS}
        for name in ("durecec", "belong", "escs", "tmins"):
            n, total = entry.get(name, (0, 0))
            value = scaled[name]
            entry[name] = (n, total) if value is None else (n + 1, total + value)
        for domain in ("math", "read", "scie"):
            sw, swpv = entry.get(domain, (0, 0))
            w = scaled["w_fstuwt"]
            for i in range(1, 11):
                pv = scaled[f"pv{i}{domain}"]
                if w is not None and pv is not None:
                    sw, swpv = sw + w, swpv + w * pv
            entry[domain] = (sw, swpv)
    return result


def _reference_value(name: str, text: str | None) -> int | None:
    """The rules again, written differently: Decimal quantize (ROUND_HALF_UP is half away from zero)."""
    if text is None or not text or text.strip() != text or text.lstrip("-") == "":
        return None
    body = text[1:] if text.startswith("-") else text
    parts = body.split(".")
    if len(parts) > 2 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    rule = RULES[name]
    exact = Decimal(text)
    if rule.codes is not None:
        return int(exact) if exact == exact.to_integral_value() and int(exact) in rule.codes else None
    scaled = int(
        exact.quantize(Decimal(1).scaleb(-rule.decimals), rounding=ROUND_HALF_UP).scaleb(rule.decimals)
    )
    if not -(2**31) + 2 <= scaled <= 2**31 - 1 or any(lo <= scaled <= hi for lo, hi in rule.missing):
        return None
    return scaled


def _as_reference(aggregates: Aggregates) -> Totals:
    result: Totals = {}
    for code, t in aggregates.as_dict().items():
        entry = {"rows": (t.rows, 0)}
        entry.update({name: (t.valid[name], t.sums[name]) for name in t.valid})
        entry.update({name: (t.weights[name], t.weighted_scores[name]) for name in t.weights})
        result[code] = entry
    return result


def _rebuilt(rows: dict[int, list[str | None]], arrivals: dict[int, int], source: str) -> Aggregates:
    fresh = Aggregates()
    ledger = Ledger(source)
    for pk, values in rows.items():
        ledger.upsert(pk, values, arrivals[pk], fresh)
    return fresh


def test_random_changes_retract_exactly() -> None:
    rng = random.Random(7)
    aggregates, ledger = Aggregates(), Ledger("ALB")
    rows: dict[int, list[str | None]] = {}
    arrivals: dict[int, int] = {}
    for step in range(4000):
        pk = rng.randrange(600)
        if step == 2000:
            assert ledger.truncate(aggregates) == len(rows) > 100
            rows.clear()
            arrivals.clear()
        elif rng.random() < 0.6:
            values = _random_row(rng, pk, 0.1)
            ledger.upsert(pk, values, step // 100, aggregates)
            rows[pk] = values
            arrivals.setdefault(pk, step // 100)  # an update keeps the first arrival
        else:
            assert ledger.delete(pk, aggregates) == (pk in rows)
            rows.pop(pk, None)
            arrivals.pop(pk, None)
        if step % 500 == 0:
            assert aggregates == _rebuilt(rows, arrivals, "ALB")
    assert len(ledger) == len(rows) > 100
    assert set(ledger.keys()) == set(rows) and all(pk in ledger for pk in rows)
    assert aggregates == _rebuilt(rows, arrivals, "ALB")
    assert _as_reference(aggregates) == _reference(rows, "ALB")
    expected_minutes: dict[int, int] = {}
    for minute in arrivals.values():
        expected_minutes[minute] = expected_minutes.get(minute, 0) + 1
    assert aggregates.by_minute() == dict(sorted(expected_minutes.items()))
    assert sum(aggregates.hourly().values()) == len(rows)
    assert aggregates.count() == len(rows)


def test_truncate_then_everything_is_gone() -> None:
    rng = random.Random(3)
    aggregates, ledger = Aggregates(), Ledger("ARG")
    for pk in range(3000):  # past a few doublings of the block
        ledger.upsert(pk, _random_row(rng, pk, 0.05), -1, aggregates)
    assert ledger.truncate(aggregates) == 3000
    assert aggregates == Aggregates() and aggregates.count() == 0 and len(ledger) == 0
    assert set(ledger.missing_counts().values()) == {0} and set(ledger.invalid_counts().values()) == {0}
    ledger.upsert(5, _row("ARG"), 1, aggregates)
    assert aggregates.rows("ARG") == 1 and len(ledger) == 1


def test_delete_of_an_unknown_key_is_counted() -> None:
    aggregates, ledger = Aggregates(), Ledger("ALB")
    assert ledger.delete(1, aggregates) is False
    ledger.upsert(1, _row("ALB"), 0, aggregates)
    assert ledger.delete(1, aggregates) is True
    assert ledger.delete(1, aggregates) is False
    assert ledger.unknown_deletes == 2 and aggregates.count() == 0


def test_merge_sums_sources() -> None:
    rng = random.Random(11)
    alb, arg, together = Aggregates(), Aggregates(), Aggregates()
    ledgers = {"ALB": (Ledger("ALB"), Ledger("ALB")), "ARG": (Ledger("ARG"), Ledger("ARG"))}
    for pk in range(800):
        source = rng.choice(["ALB", "ARG"])
        values = _random_row(rng, pk, 0.05)
        own, shared = ledgers[source]
        own.upsert(pk, values, pk % 5, alb if source == "ALB" else arg)
        shared.upsert(pk, values, pk % 5, together)
    merged = Aggregates().merge(alb).merge(arg)
    assert merged == together
    assert merged.count() == alb.count() + arg.count() == 800
    assert alb != together  # comparison is not vacuous
    assert merged.merge(Aggregates()) == together
    assert alb.copy() == alb and alb.copy() is not alb


def _checkpoint(store: dict[int, bytes], changes: list[tuple[int, bytes | None]]) -> None:
    for pk, packed in changes:
        if packed is None:
            store.pop(pk, None)
        else:
            store[pk] = packed


def test_take_changes_and_restore_rebuild_the_same_state() -> None:
    rng = random.Random(5)
    aggregates, ledger = Aggregates(), Ledger("AUS")
    store: dict[int, bytes] = {}
    for round_ in range(6):
        touched = set()
        for _ in range(400):
            pk = rng.randrange(300)
            if rng.random() < 0.75:
                ledger.upsert(pk, _random_row(rng, pk, 0.1), round_, aggregates)
                touched.add(pk)
            elif ledger.delete(pk, aggregates):  # deleting an unknown key changes nothing
                touched.add(pk)
        changes = list(ledger.take_changes())
        assert sorted(pk for pk, _ in changes) == sorted(touched)  # exactly the changes, each once
        assert all((packed is None) == (pk not in ledger) for pk, packed in changes)
        _checkpoint(store, changes)
        assert list(ledger.take_changes()) == []
        restored_aggregates = Aggregates()
        restored = Ledger.restore("AUS", store.items(), restored_aggregates)
        assert restored_aggregates == aggregates
        assert len(restored) == len(ledger)
        assert restored.missing_counts() == ledger.missing_counts()
        assert restored.invalid_counts() == ledger.invalid_counts()
    # a restored ledger keeps working: its rows retract exactly
    for pk in list(store)[:50]:
        restored.delete(pk, restored_aggregates)
        ledger.delete(pk, aggregates)
    assert restored_aggregates == aggregates
    ledger.truncate(aggregates)
    changes = list(ledger.take_changes())  # the 50 deletes and the truncation: every key, each once, gone
    assert (
        sorted(pk for pk, packed in changes if packed is None)
        == sorted(pk for pk, _ in changes)
        == sorted(store)
    )


def test_restore_refuses_rows_of_another_layout() -> None:
    with pytest.raises(PisaPulseError, match="bytes"):
        Ledger.restore("ALB", [(1, b"\x00" * 10)], Aggregates())


def test_restore_refuses_a_key_held_twice_or_an_unknown_country() -> None:
    ledger, aggregates = Ledger("ALB"), Aggregates()
    ledger.upsert(1, _row("ALB"), 3, aggregates)
    keys, rows = ledger.records()
    twice = (np.concatenate([keys, keys]), np.concatenate([rows, rows]))
    with pytest.raises(PisaPulseError, match="row 1 of ALB is corrupt"):
        Ledger.from_records("ALB", twice, Aggregates())
    rows = rows.copy()
    rows[0, :4] = np.frombuffer(np.int32(len(COUNTRY_CODES)).tobytes(), dtype=np.uint8)  # the country column
    with pytest.raises(PisaPulseError, match="row 1 of ALB is corrupt"):
        Ledger.from_records("ALB", (keys, rows), Aggregates())


def _state(ledger: Ledger) -> dict[int, tuple[bytes, int | None]]:
    """Per key held: its checkpointed record and its digest."""
    keys, packed = ledger.records()
    return {pk: (row.tobytes(), ledger.digest(pk)) for pk, row in zip(keys.tolist(), packed, strict=True)}


def test_from_records_rebuilds_the_same_state() -> None:
    """Keys anywhere in int64, slots freed and reused: the restored ledger holds and does the same."""
    rng = random.Random(9)
    aggregates, ledger = Aggregates(), Ledger("ALB")
    extremes = [-(2**63), -(2**63) + 1, -1, 0, 2**62, 2**63 - 1]
    for step in range(6_000):
        pk = rng.choice(extremes) if step % 50 == 0 else rng.randrange(-(2**63), 2**63) >> rng.choice([0, 50])
        if rng.random() < 0.7:
            ledger.upsert(
                pk, _random_row(rng, pk, 0.1), step // 100, aggregates, rng.randrange(-(2**63), 2**63)
            )
        else:
            ledger.delete(pk if rng.random() < 0.5 else rng.choice(sorted(ledger.keys())), aggregates)
    restored_aggregates = Aggregates()
    restored = Ledger.from_records("ALB", ledger.records(), restored_aggregates)
    assert restored_aggregates == aggregates and len(restored) == len(ledger) > 1_000
    assert restored.keys() == ledger.keys() and _state(restored) == _state(ledger)
    assert restored.missing_counts() == ledger.missing_counts()
    assert restored.invalid_counts() == ledger.invalid_counts()
    for name in ("keys_and_digests", "records"):
        mine, theirs = getattr(ledger, name)(), getattr(restored, name)()
        assert sorted(zip(*(a.tolist() for a in mine))) == sorted(zip(*(a.tolist() for a in theirs)))
    assert all(pk in restored for pk in extremes if pk in ledger)
    assert restored.digest(12345) is None and 12345 not in restored and "12345" not in restored
    for pk in [*extremes, *rng.sample(sorted(ledger.keys()), 500)]:  # both go on alike
        for one, part in ((ledger, aggregates), (restored, restored_aggregates)):
            one.delete(pk, part)
            one.upsert(pk + 1 if pk < 2**63 - 1 else pk, _row("ARG"), 99, part, 7)
    assert restored_aggregates == aggregates and _state(restored) == _state(ledger)


def test_upsert_many_does_what_upserts_one_by_one_do() -> None:
    """New keys in bulk, held keys and keys twice in one run row by row: the same rows, counts, sums."""
    rng = random.Random(11)
    one, many = (Ledger("ALB"), Aggregates()), (Ledger("ALB"), Aggregates())
    for run in range(40):
        held = sorted(one[0].keys())
        changes = []
        for _ in range(rng.choice([1, 70, 900])):  # grows the block past its first capacity
            pk = rng.choice(held) if held and rng.random() < 0.2 else rng.randrange(-(2**63), 2**63) >> 40
            changes.append((pk, _random_row(rng, pk, 0.1), rng.randrange(-(2**63), 2**63)))
        changes += [(pk, _random_row(rng, pk, 0.3), 5) for pk, _, _ in changes[: rng.randint(0, 3)]]
        for pk, values, digest in changes:
            one[0].upsert(pk, values, run, one[1], digest)
        many[0].upsert_many(changes, run, many[1])
        if run % 7 == 3:  # deletes free slots for the next run to reuse
            for pk in rng.sample(sorted(one[0].keys()), 50):
                one[0].delete(pk, one[1])
                many[0].delete(pk, many[1])
    assert many[1] == one[1] and _state(many[0]) == _state(one[0]) and len(many[0]) > 5_000
    assert many[0].missing_counts() == one[0].missing_counts()
    assert many[0].invalid_counts() == one[0].invalid_counts()
    assert dict(many[0].take_changes()) == dict(one[0].take_changes())


def test_bulk_sums_are_exact_where_int64_products_would_overflow() -> None:
    """Weights and plausible values at the ends of int32, over enough rows that Σw·pv passes 2**63."""
    rng = np.random.default_rng(3)
    n = 5_000
    rows = rng.integers(VALID_MIN, 2**31, size=(n, ROW_WIDTH), dtype=np.int64).astype(np.int32)
    rows[:, COUNTRY] = rng.integers(0, 3, size=n)
    rows[:, ARRIVAL] = rng.integers(-1, 4, size=n)
    rows[: n // 2, FIRST_VALUE:] = 2**31 - 1  # the largest values, all valid
    holes = rng.random(size=(n, ROW_WIDTH)) < 0.05  # and some missing or invalid anywhere
    holes[:, :FIRST_VALUE] = False
    rows[holes] = rng.choice([MISSING, INVALID], size=int(holes.sum()))
    one_by_one, bulk = Aggregates(), Aggregates()
    for row in rows.tolist():
        one_by_one.add(row)
    bulk.add_rows(rows)
    assert bulk == one_by_one and bulk.export(full=True) == one_by_one.export(full=True)
    assert max(s for sums, _ in bulk.export(full=True).values() for s in sums) > 2**63


def test_unchanged_values_keep_the_previous_ones() -> None:
    aggregates, ledger = Aggregates(), Ledger("ALB")
    ledger.upsert(1, _row("ARG", escs="1.0000", pv1math="NA"), 4, aggregates)
    update = _row(UNCHANGED, escs=UNCHANGED, pv1math=UNCHANGED, belong="2.0000")
    ledger.upsert(1, update, 9, aggregates)
    expected = Aggregates()
    Ledger("ALB").upsert(1, _row("ARG", escs="1.0000", pv1math="NA", belong="2.0000"), 4, expected)
    assert aggregates == expected
    assert aggregates.by_minute() == {4: 1}  # the update kept the arrival minute
    assert ledger.missing_counts()["pv1math"] == 1
    # an unchanged value of an unknown row is missing
    ledger.upsert(2, _row(UNCHANGED, escs=UNCHANGED), 9, aggregates)
    assert ledger.missing_counts()["escs"] == 1 and ledger.missing_counts()["cnt"] == 1
    assert aggregates.rows("ALB") == 1  # its country is the source's


def test_missing_and_invalid_counts_follow_the_rows() -> None:
    aggregates, ledger = Aggregates(), Ledger("ALB")
    ledger.upsert(1, _row("NA", escs="NA", tmins=None, belong="n/a", pv3read=" 512.000"), 0, aggregates)
    ledger.upsert(2, _row("alb", escs="95", durecec="9"), 0, aggregates)
    missing, invalid = ledger.missing_counts(), ledger.invalid_counts()
    assert {k: v for k, v in missing.items() if v} == {"cnt": 1, "escs": 1, "tmins": 1}
    assert {k: v for k, v in invalid.items() if v} == {
        "cnt": 1,
        "belong": 1,
        "pv3read": 1,
        "escs": 1,
        "durecec": 1,
    }
    ledger.upsert(2, _row("ALB"), 0, aggregates)  # corrected
    ledger.delete(1, aggregates)
    assert set(ledger.missing_counts().values()) == {0} and set(ledger.invalid_counts().values()) == {0}


def test_derived_values() -> None:
    aggregates, ledger = Aggregates(), Ledger("ALB")
    ledger.upsert(1, _row("ALB", durecec="2", belong="1.0000", escs="0.5000", tmins="60", w_fstuwt="1.00000",
                          pv1math="400.000"), 0, aggregates)  # fmt: skip
    math = {f"pv{i}math": "300.000" for i in range(2, 11)}
    ledger.upsert(2, _row("ALB", durecec="3", belong="-0.5000", escs="NA", tmins="120", w_fstuwt="3.00000",
                          **math), 0, aggregates)  # fmt: skip
    ledger.upsert(
        3, _row("ALB", durecec="n/a", belong="NA", escs="95", tmins="NA", w_fstuwt="NA"), 0, aggregates
    )
    assert aggregates.rows("ALB") == 3 and aggregates.count() == 3 and aggregates.country_codes() == ["ALB"]
    assert aggregates.mean("ALB", "belong", 4) == 0.25
    assert aggregates.mean("ALB", "escs", 4) == 0.5
    assert aggregates.mean("ALB", "durecec", 1) == 2.5
    assert aggregates.early_education_years("ALB") == 3  # 2.5 rounds away from zero
    assert aggregates.learning_hours("ALB") == 2  # 90 minutes: 1.5 hours -> 2
    # math: row 1 has PV1 400 and nine default PVs of 500, weight 1; row 2 PV1 500 and nine of 300, weight 3
    row1 = 400 + 9 * 500
    row2 = 500 + 9 * 300
    assert (row1 * 1 + row2 * 3) / (10 * 1 + 10 * 3) == 362.5
    assert aggregates.mean_score("ALB", "math", 1) == 362.5
    assert aggregates.mean_score("ALB", "math", 0) == 363  # half away from zero
    assert aggregates.mean_score("ALB", "read", 1) == 500.0
    assert aggregates.mean("ARG", "belong", 4) is None and aggregates.mean_score("ARG", "math", 1) is None
    assert aggregates.early_education_years("ARG") is None and aggregates.learning_hours("ARG") is None
    t = aggregates.totals("ALB")
    assert t.valid == {"durecec": 2, "belong": 2, "escs": 1, "tmins": 2}
    assert t.weights["math"] == 40 * 100_000  # ten pairs each of weights 1 and 3, at scale 10^5
    assert t.minutes == {0: 3}


def test_rounded_means_settle_decimal_ties_away_from_zero() -> None:
    # 0.00015 and -0.00015 are ties at 4 decimals; as floats, round() gives 0.0001 and -0.0001.
    aggregates, ledger = Aggregates(), Ledger("ALB")
    for pk, belong in enumerate(["0.0001", "0.0002"]):
        ledger.upsert(pk, _row("ALB", belong=belong, escs="-" + belong), 0, aggregates)
    assert round(0.00015, 4) == 0.0001  # what a float would give
    assert aggregates.mean("ALB", "belong", 4) == 0.0002
    assert aggregates.mean("ALB", "escs", 4) == -0.0002


def test_rounded_chart_integers_round_half_away_from_zero() -> None:
    aggregates, ledger = Aggregates(), Ledger("ALB")
    for pk, tmins in enumerate(["89", "90"]):  # mean 89.5 minutes: 1.49 hours -> 1
        ledger.upsert(pk, _row("ALB", tmins=tmins), 0, aggregates)
    assert aggregates.learning_hours("ALB") == 1
    ledger.upsert(9, _row("ALB", tmins="91"), 0, aggregates)  # mean 90: 1.5 -> 2
    assert aggregates.learning_hours("ALB") == 2


def test_without_arrivals_compares_everything_else() -> None:
    a, b = Aggregates(), Aggregates()
    Ledger("ALB").upsert(1, _row("ALB"), 5, a)
    Ledger("ALB").upsert(1, _row("ALB"), -1, b)
    assert a != b
    assert a.without_arrivals() == b.without_arrivals()
    assert a.by_minute() == {5: 1}  # the copy left the original alone
    Ledger("ALB").upsert(2, _row("ALB", belong="1.0000"), -1, b)
    assert a.without_arrivals() != b.without_arrivals()


def test_forgotten_arrival_minutes_stay_forgotten_and_the_sums_stay_exact() -> None:
    """Only a window of arrival minutes is kept (memory flat over days): a row of a forgotten minute,
    withdrawn or corrected later, changes the sums exactly and leaves the minutes alone."""
    rng = random.Random(5)
    kept, forgetting = Aggregates(), Aggregates()
    ledgers = (Ledger("ALB"), Ledger("ALB"))
    for pk in range(600):  # ten hours of arrivals, a few from the initial copy
        minute = -1 if pk < 20 else pk
        values = _random_row(rng, pk, 0.05)
        for ledger, agg in zip(ledgers, (kept, forgetting), strict=True):
            ledger.upsert(pk, values, minute, agg)
    forgetting.export()  # what was touched so far has been sent
    assert forgetting.forget_before(300) == 280 and forgetting.forget_before(200) == 0  # only forward
    assert set(forgetting.by_minute()) == {-1, *range(300, 600)}
    assert forgetting.export() == {c: (sums, {}) for c, (sums, _) in forgetting.export_sums().items()}
    for pk in (25, 100, 299, 300, 450, 5):  # withdrawals of forgotten, kept and copied rows
        for ledger, agg in zip(ledgers, (kept, forgetting), strict=True):
            ledger.delete(pk, agg)
    for pk in (30, 301):  # a correction keeps its first arrival
        values = _random_row(rng, pk, 0.05)
        for ledger, agg in zip(ledgers, (kept, forgetting), strict=True):
            ledger.upsert(pk, values, 590, agg)
    assert forgetting.without_arrivals() == kept.without_arrivals()  # the sums: exact
    expected = {m: n for m, n in kept.by_minute().items() if m == -1 or m >= 300}
    assert forgetting.by_minute() == expected and min(expected.values()) > 0
    assert forgetting != kept  # the comparison is not vacuous: kept still has the early minutes
    copied = forgetting.copy()
    assert copied.horizon == 300 and copied == forgetting
    merged = Aggregates()
    merged.forget_before(300)
    assert merged.merge(kept) == forgetting  # a merge into a window leaves the older minutes out
    absorbed = Aggregates()
    absorbed.forget_before(300)
    absorbed.absorb(kept.export(full=True), full=True)
    assert absorbed == forgetting
    block = np.random.default_rng(5).integers(VALID_MIN, 1000, size=(2, ROW_WIDTH)).astype(np.int32)
    block[:, COUNTRY] = COUNTRY_CODES.index("ALB")
    block[:, ARRIVAL] = (10, 400)  # a restore (bulk) of a forgotten minute's row and of a kept one's
    bulk, one_by_one = forgetting.copy(), forgetting.copy()
    bulk.add_rows(block)
    for one in block.tolist():
        one_by_one.add(one)
    assert bulk == one_by_one and bulk.count() == forgetting.count() + 2
    assert bulk.by_minute() == {**forgetting.by_minute(), 400: forgetting.by_minute().get(400, 0) + 1}


def test_the_window_kept_is_a_week_and_more_at_the_given_time() -> None:
    agg = Aggregates()
    now = 1_780_000_000.0
    agg.keep_window(now)
    week = 7 * 24 * 60
    assert int(now // 60) - agg.horizon > week  # chart 2's longest window is answered from memory
    assert int(now // 60) - agg.horizon < week + 24 * 60  # and a day later it is gone
