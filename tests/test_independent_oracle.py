"""Every chart over HTTP against the independent oracle (tests/independent_oracle.py), in every mode.

The oracle shares no rule with pisa_pulse: its column rules, number pattern, country list and
rounding are written out by hand from the codebook and the chart contracts, and it sums the source
databases in SQL itself. Two kinds of test, each run against `serve --mode replication`, `poll` and
`direct`:
- **traffic**: seeded sources, then live traffic (inserts, corrections, withdrawals, messy values)
  and a few hand-made messy changes; every chart's body must equal the oracle's once the API has
  caught up.
- **a dozen hand-made rows** in empty sources, with every chart's body computed on paper below
  (HAND_BODIES): the oracle must give them too, and so must the API.

Submissions over time: SQL cannot see when a row arrived, so the test says which rows arrived when
(those that were not there when capture had started, all written between two moments it notes).
In replication mode a row arrives at its transaction's commit, so the chart is compared point by
point (by its total only if the writes straddled an hour). In poll mode a row arrives at the poll
that first saw it, so that chart is compared by its labels and total only. Direct mode captures
nothing, so every point is 0.

Only plumbing comes from pisa_pulse here: the sources (conftest's `shared`), the server (`serving`)
and the traffic generator.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from pisa_pulse.sources.config import SourcesConfig
from pisa_pulse.sources.traffic import Traffic
from tests import independent_oracle as oracle
from tests.conftest import SharedServer, serving, wait_for

MODES = ("replication", "poll", "direct")
READY_STATE = {"replication": "streaming", "poll": "polling", "direct": "direct"}
ASKED = "qaz,ALB,xxx,alb,aus"  # ?countries= besides the default: order kept, repeats and unknowns dropped
GRACE_S = 10.0  # once the API says it has caught up, how long a difference may still last (generous: a
# slow machine answers the status and the charts some time apart)
Bodies = dict[str, dict[str, Any]]
Arrivals = dict[int, int]


# -- HTTP -----------------------------------------------------------------------------------------------


def get(url: str) -> tuple[Any, dict[str, str]]:
    """A JSON body and its headers (lower-case names)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}


def api_bodies(base: str, asked: str | None) -> tuple[Bodies, list[float]]:
    """Every chart's body (per-country charts with `?countries=asked`, or their default without),
    and each answer's X-Data-As-Of (0 where it has none)."""
    bodies: Bodies = {}
    as_of: list[float] = []
    for name in oracle.CHART_NAMES:
        query = f"?countries={asked}" if asked is not None and name in oracle.PER_COUNTRY else ""
        body, headers = get(f"{base}api/charts/{name}{query}")
        bodies[name] = body
        stamp = headers.get("x-data-as-of", "unknown")  # unknown: a source has not said yet
        known = stamp != "unknown"
        as_of.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if known else 0.0)
    return bodies, as_of


def source_states(base: str) -> list[dict[str, Any]]:
    """/api/status's sources (empty while the server cannot answer)."""
    try:
        status = get(base + "api/status")[0]
    except OSError:
        return []
    sources: list[dict[str, Any]] = status["sources"]
    return sources


def wait_ready(base: str, mode: str, sources: int) -> None:
    """Until every source is copied and followed (streaming, polling) or queried (direct)."""
    wait_for(
        lambda: [s["state"] for s in source_states(base)] == [READY_STATE[mode]] * sources,
        timeout=90,
        what=f"every source {READY_STATE[mode]}",
        detail=lambda: source_states(base),
    )


def caught_up(base: str, mode: str, stopped: float, as_of: Sequence[float]) -> bool:
    """Whether the API says every change committed before `stopped` is in its answers."""
    if mode == "direct":
        return True  # each request queries the sources
    if min(as_of) <= stopped:
        return False
    if mode == "poll":  # updates are in only once a reconciliation has started after them
        return all(
            (s.get("poll", {}).get("updates_as_of_us") or 0) / 1e6 > stopped for s in source_states(base)
        )
    return True


# -- comparing ------------------------------------------------------------------------------------------


def typed(value: Any) -> Any:
    """`value` with every number tagged int or float, so that 3 and 3.0 differ."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    return value


def totals_only(body: dict[str, Any]) -> dict[str, Any]:
    """Submissions over time as its labels and its total (where arrival minutes cannot be known)."""
    data = body["datasets"][0]["data"]
    return {"labels": [p["x"] for p in data], "total": sum(p["y"] for p in data)}


def differences(got: Bodies, expected: Bodies, by_total: bool, where: str = "") -> list[str]:
    """One line per chart (per dataset, where both list as many) that differs from the expected."""
    lines = []
    for name in oracle.CHART_NAMES:
        mine, theirs = expected[name], got[name]
        if name == "submissions-over-time" and by_total:
            mine, theirs = totals_only(mine), totals_only(theirs)
        if typed(mine) == typed(theirs):
            continue
        pairs = [(mine, theirs)]
        if "datasets" in mine and "datasets" in theirs and len(mine["datasets"]) == len(theirs["datasets"]):
            pairs = [(a, b) for a, b in zip(mine["datasets"], theirs["datasets"]) if typed(a) != typed(b)]
        lines += [f"{name}{where}: expected {json.dumps(a)}, got {json.dumps(b)}" for a, b in pairs]
    return lines


def assert_api_equals(
    base: str,
    mode: str,
    stopped: float,
    expected: Callable[[str | None, float], Bodies],
    by_total: bool,
    explain: Callable[[], object] = lambda: "",
    timeout: float = 90,
) -> None:
    """Until the API's charts, per-country ones with their default countries and with ?countries=ASKED,
    equal `expected(asked, now)` (then pass), or the API has said for GRACE_S that it has caught up
    with `stopped` (then fail showing every chart that differs, and `explain()`)."""
    lines: list[str] = []
    since: list[float] = []

    def settled() -> bool:
        nonlocal lines
        lines = []
        caught = True
        for asked in (None, ASKED):
            got, as_of = api_bodies(base, asked)
            where = "" if asked is None else f"?countries={asked}"
            lines += differences(got, expected(asked, time.time()), by_total, where)
            caught = caught and caught_up(base, mode, stopped, as_of)
        if not lines:
            return True
        if caught:
            since.append(time.monotonic())
            return since[-1] - since[0] > GRACE_S
        since.clear()
        return False

    wait_for(settled, timeout, what=f"the API ({mode}) equal to the expected bodies", detail=lambda: lines)
    assert not lines, (
        f"the API ({mode}) differs from the expected bodies:\n"
        + "\n".join(lines)
        + (f"\nexact means before rounding: {explain()}")
    )


# -- sources --------------------------------------------------------------------------------------------


def up(
    shared: SharedServer, data_dir: Path, countries: str, rows: int
) -> tuple[SourcesConfig, dict[str, str]]:
    """Slim sources on the shared cluster (the chart columns are in the slim layout), with this test's
    slot prefix and a quick reconciliation for poll mode; returns the config and code -> DSN."""
    config = shared.up(data_dir, countries=countries, schema="slim", rows_per_country=rows, messy=0.05)
    with (data_dir / "sources.toml").open("a", encoding="utf-8") as settings:
        settings.write(
            f'\n[capture]\nslot_prefix = "{shared.slot_prefix}"\n'
            "poll_interval = 0.25\nreconcile_interval = 1\n"
        )
    return config, {s.name.upper(): s.dsn for s in config.sources}


def table_columns(dsn: str) -> list[str]:
    """The `responses` table's columns, in order."""
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'responses' "
            "ORDER BY ordinal_position"
        )
        return [str(row[0]) for row in cur.fetchall()]


def insert(dsn: str, rows: Sequence[Mapping[str, object]]) -> None:
    """Rows in one transaction, every column not given as 'NA' (as the original databases held it)."""
    names = table_columns(dsn)
    statement = sql.SQL("INSERT INTO responses ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(sql.Placeholder() * len(names))
    )
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        for row in rows:
            cur.execute(statement, [row.get(n, oracle.MISSING_TEXT) for n in names])


def execute(dsn: str, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
    """Statements in one transaction."""
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        for statement, params in statements:
            cur.execute(statement, params)


def student(
    id: int,
    cnt: str | None,
    durecec: str | None,
    belong: str | None,
    escs: str | None,
    tmins: str | None,
    weight: str | None,
    math: str | Sequence[str | None] | None,
    read: str | Sequence[str | None] | None,
    scie: str | Sequence[str | None] | None,
) -> dict[str, object]:
    """A row's chart columns (a domain given as one value: all ten PVs hold it)."""
    row: dict[str, object] = {
        "id": id,
        "cnt": cnt,
        "durecec": durecec,
        "belong": belong,
        "escs": escs,
        "tmins": tmins,
        "w_fstuwt": weight,
    }
    for suffix, pvs in (("math", math), ("read", read), ("scie", scie)):
        values = [pvs] * 10 if pvs is None or isinstance(pvs, str) else list(pvs)
        assert len(values) == 10
        row.update({f"pv{i}{suffix}": v for i, v in enumerate(values, start=1)})
    return row


# -- the hand-computed fixture ----------------------------------------------------------------------------

# Source `alb` (its rows count for ALB unless their cnt is another valid code).
# student(id, cnt, DURECEC, BELONG, ESCS, TMINS, W_FSTUWT, MATH x10, READ x10, SCIE x10)
A1 = student(1001, "ALB", "2", "0.0001", "-0.1234", "1500", "1.00000", "400.000", "500.100", "450.000")
A2 = student(1002, "ALB", "8", "0.0002", "-0.1235", "1680", "3.00000", "600.000", "500.300", "450.000")
A2_DURECEC = "3.0"  # A2 is corrected to this: code 3 exactly (its '8' must be retracted)
A3 = student(1003, "NA", "9", "NA", "", " 1500 ", "NA", "800.000", "800.000", "800.000")
A4 = student(
    1004, "alb", "95", "97", "1e5", "99999996", "2.00000", "NA", "NA",
    ("300.000", "300.000", "300.000", "300.000", "300.000", "NA", "", "1e3", " 300.000", "+300.000"),
)  # fmt: skip
A5 = student(1005, "ARG", "4", "0.1000", "0.5003", "1200", "10.00000", "500.000", "500.000", "500.000")
A6 = student(1006, None, None, None, None, None, None, None, None, None)  # SQL NULL everywhere
# Source `arg`.
R1 = student(2001, "ARG", "003", "0.10007", "-0.00005", "600.4", "5.000004", "450.0005", "450.000", "450.000")
R2 = student(2002, "alb", "2.5", "-", "1.5", "+600", "1.00000", "400.000", "99", None)
R2_ESCS = "n/a"  # R2 is corrected to this (its 1.5 must be retracted)
R3 = student(2003, "ARG", "-1", "95", "94.99995", "99999999", "0.5", "1e2", "600", ".5")
R4 = student(2004, "XXX", "NA", "NA", "NA", "NA", "2.00000", "NA", "NA", "NA")
R5 = student(2005, " ARG", "7", "NA", "-0.5", "2400", "-", "700.000", "700.000", "700.000")
R6 = student(2006, "QAZ", "0", "NA", "0.1", "60", "1.00000", "NA", "400.000", "NA")
R7 = student(2007, "ARG", "8", "3", "3", "6000", "100.00000", "999.000", "999.000", "999.000")  # withdrawn

# What each value is, by the rule table (independent_oracle.RULES):
# - country: a valid cnt wins (A5 counts for ARG, R6 for QAZ: Baku is one of the 79); 'NA', NULL,
#   'alb' (lower case), ' ARG' (blank) and 'XXX' are not codes, so the row stays with its database:
#   ALB = A1 A2 A3 A4 A6 (5 rows), ARG = A5 R1 R2 R3 R4 R5 (6 rows), QAZ = R6 (1 row); 12 in all.
# - invalid (present, not a valid value): DURECEC '9' (no such code), '95' (missing code), '2.5'
#   (not a code exactly), '-1'; BELONG '97', '95', '-'; ESCS '' (empty), '1e5' (exponent), 'n/a',
#   '94.99995' (read at F7.4 it is 95.0000, in the missing range 95-99); TMINS ' 1500 ' (blanks),
#   '99999996' (in the SPSS range 99999995-99999999 though not a listed code), '+600', '99999999';
#   W_FSTUWT '-' (so R5's PVs count for nothing), 'NA' (A3's neither); PVs '', '1e3', ' 300.000',
#   '+300.000', '1e2', '.5'.
# - valid after reading at the format's decimals: DURECEC '3.0' = 3, '003' = 3; BELONG '0.10007' =
#   0.1001; ESCS '-0.00005' = -0.0001 (half away from zero); TMINS '600.4' = 600; W_FSTUWT
#   '5.000004' = 5.00000, '0.5' = 0.50000; PVs '450.0005' = 450.001, '99' = 99.000, '600' = 600.000.
#
# ALB:
#   DURECEC 2, 3 -> mean 2.5 -> x = 3 (a tie: half away from zero; half to even would give 2)
#   BELONG 0.0001, 0.0002 -> 0.00015 -> 0.0002 (a tie at the 4th decimal; half up and half even agree)
#   ESCS -0.1234, -0.1235 -> -0.12345 -> -0.1235 (a tie, away from zero)
#   TMINS 1500, 1680 -> 1590 min = 26.5 h -> 27 (a tie; half to even would give 26)
#   MATH: A1 w=1 x10 PVs of 400, A2 w=3 x10 of 600 -> (10*400 + 30*600) / 40 = 550.0 (unweighted: 500)
#   READ: (10*500.1 + 30*500.3) / 40 = 20010 / 40 = 500.25 -> 500.3 (a tie)
#   SCIE: A1 10*1*450 = 4500 over 10; A2 10*3*450 = 13500 over 30; A4 5 valid pairs 5*2*300 = 3000
#         over 10 -> 21000 / 50 = 420.0 (PISA's mean of the ten weighted means would say 425.0)
# ARG:
#   DURECEC 4, 3, 7 -> 14/3 = 4.67 -> x = 5
#   BELONG 0.1000, 0.1001 -> 0.10005 -> 0.1001 (a tie; with R1 unrounded, 0.100035 -> 0.1000)
#   ESCS 0.5003, -0.0001, -0.5 -> 0.0002 / 3 = 0.0000667 -> 0.0001 (R3 counted would give ~23.75)
#   TMINS 1200, 600, 2400 -> 1400 min = 23.33 h -> 23
#   MATH: A5 10*10*500 = 50000 over 100; R1 10*5*450.001 = 22500.05 over 50; R2 10*1*400 = 4000
#         over 10 -> 76500.05 / 160 = 478.125... -> 478.1
#   READ: A5 50000/100; R1 22500/50; R2 990/10; R3 10*0.5*600 = 3000/5 -> 76490 / 165 = 463.58 -> 463.6
#   SCIE: A5 50000/100; R1 22500/50 (R2 NULL, R3 invalid) -> 72500 / 150 = 483.33 -> 483.3
# QAZ: DURECEC 0 -> 0; BELONG none -> null; ESCS 0.1; TMINS 60 -> 1 h; READ 400.0; MATH, SCIE none -> null.
HAND_BODIES: Bodies = {
    "submissions": {"count": 12},
    "early-education-and-belonging": {
        "datasets": [
            {"id": "ALB", "data": [{"x": 3, "y": 0.0002, "submissions": 5}]},
            {"id": "ARG", "data": [{"x": 5, "y": 0.1001, "submissions": 6}]},
            {"id": "QAZ", "data": [{"x": 0, "y": None, "submissions": 1}]},
        ]
    },
    "escs": {
        "datasets": [
            {"id": "ALB", "value": -0.1235},
            {"id": "ARG", "value": 0.0001},
            {"id": "QAZ", "value": 0.1},
        ]
    },
    "learning-hours-per-week": {
        "datasets": [
            {"country": "ALB", "hours": 27},
            {"country": "ARG", "hours": 23},
            {"country": "QAZ", "hours": 1},
        ]
    },
    "performance": {
        "datasets": [
            {"id": "ALB", "reading": 500.3, "mathematics": 550.0, "science": 420.0, "submissions": 5},
            {"id": "ARG", "reading": 463.6, "mathematics": 478.1, "science": 483.3, "submissions": 6},
            {"id": "QAZ", "reading": 400.0, "mathematics": None, "science": None, "submissions": 1},
        ]
    },
}


def hand_bodies(asked: str | None, now: float, arrivals: Mapping[int, int]) -> Bodies:
    """HAND_BODIES for `?countries=asked` (the datasets of the countries asked, in that order),
    with submissions over time: 12 rows arrived in the hours `arrivals` says."""
    bodies = copy.deepcopy(HAND_BODIES)
    if asked is not None:
        order = list(dict.fromkeys(code.upper() for code in asked.split(",")))
        for name in oracle.PER_COUNTRY:
            by_code = {d.get("id", d.get("country")): d for d in bodies[name]["datasets"]}
            bodies[name]["datasets"] = [by_code[c] for c in order if c in by_code]
    bodies["submissions-over-time"] = oracle.submissions_over_time(now, arrivals)
    return bodies


def write_hand_rows(sources: Mapping[str, str]) -> None:
    """The fixture's rows, a correction in each source and a withdrawal, in four transactions."""
    insert(sources["ALB"], [A1, A2, A3, A4, A5, A6])
    insert(sources["ARG"], [R1, R2, R3, R4, R5, R6, R7])
    execute(sources["ALB"], [("UPDATE responses SET durecec = %s WHERE id = %s", (A2_DURECEC, 1002))])
    execute(
        sources["ARG"],
        [
            ("UPDATE responses SET escs = %s WHERE id = %s", (R2_ESCS, 2002)),
            ("DELETE FROM responses WHERE id = %s", (2007,)),
        ],
    )


def split(asked: str | None) -> list[str] | None:
    """?countries= as the oracle takes it."""
    return None if asked is None else asked.split(",")


# -- arrivals ---------------------------------------------------------------------------------------------


def arrivals_of(mode: str, new_rows: int, started: float, stopped: float) -> tuple[Arrivals, bool]:
    """Rows per arrival hour for the expected chart 2, and whether to compare it by total only."""
    if mode == "direct":
        return {}, False  # nothing is captured: no row has an arrival time
    first, last = int(started // 3600), int(stopped // 3600)
    # Poll mode: the poll that saw a row is its arrival; replication: its commit (by total if the
    # writes straddled an hour).
    return {last: new_rows}, mode == "poll" or first != last


# -- the tests --------------------------------------------------------------------------------------------


def test_rounding_is_exact_and_ties_go_away_from_zero() -> None:
    cases = [
        (Fraction(3, 2), 0, "2"),
        (Fraction(5, 2), 0, "3"),
        (Fraction(-5, 2), 0, "-3"),
        (Fraction(53, 2), 0, "27"),
        (Fraction(3, 20000), 4, "0.0002"),  # 0.00015: a binary double rounds it to 0.0001
        (Fraction(-2469, 20000), 4, "-0.1235"),
        (Fraction(2001, 4), 1, "500.3"),  # 500.25
        (Fraction(1, 3), 4, "0.3333"),
        (Fraction(-1, 30000), 4, "0.0000"),
    ]
    for value, decimals, shown in cases:
        assert oracle.round_half_away(value, decimals) == Decimal(shown), (value, decimals)


def test_the_rule_table_covers_the_chart_columns_by_hand() -> None:
    assert len(oracle.RULES) == 35 and len(oracle.BY_COLUMN) == 35
    assert len(oracle.COUNTRIES) == len(set(oracle.COUNTRIES)) == 79
    pvs = [r for r in oracle.RULES if r.column.startswith("pv")]
    assert len(pvs) == 30 and {(r.spss_format, r.missing_codes, r.missing_range) for r in pvs} == {
        ("F8.3", (), None)
    }


@pytest.mark.server
@pytest.mark.parametrize("mode", MODES)
def test_hand_computed_rows(mode: str, new_dir: Path, shared: SharedServer) -> None:
    _, sources = up(shared, new_dir, "alb,arg", rows=0)
    with serving("--data-dir", str(new_dir), "--mode", mode) as server:
        wait_ready(server.url, mode, len(sources))
        started = time.time()
        write_hand_rows(sources)
        stopped = time.time()
        arrivals, by_total = arrivals_of(mode, 12, started, stopped)
        # The oracle's SQL and rounding agree with the paper ...
        totals = oracle.all_totals(sources)
        for asked in (None, ASKED):
            now = time.time()
            mine = oracle.chart_bodies(totals, now, arrivals, split(asked))
            wrong = differences(mine, hand_bodies(asked, now, arrivals), by_total=False)
            assert not wrong, "the oracle ('got') differs from the paper:\n" + "\n".join(wrong)
        # ... and so must the API.
        assert_api_equals(
            server.url,
            mode,
            stopped,
            lambda asked, now: hand_bodies(asked, now, arrivals),
            by_total,
            lambda: oracle.exact_means(totals),
        )


def messy_changes(sources: Mapping[str, str]) -> None:
    """Hand-made changes the traffic does not make, in each source: a correction to values the rule
    table must read at their format (or find in a missing range), another to invalid ones, a
    withdrawal, and a new row whose cnt is Baku's (in `alb`) or not a code (elsewhere)."""
    first = "(SELECT min(id) FROM responses)"
    careful = (
        f"UPDATE responses SET escs = %s, belong = %s, tmins = %s, durecec = %s, pv1read = %s, "
        f"w_fstuwt = %s WHERE id = {first}"
    )
    invalid = (
        "UPDATE responses SET durecec = %s, escs = %s, belong = %s, pv1math = %s, pv2math = %s, "
        "tmins = %s WHERE id = (SELECT max(id) FROM responses)"
    )
    withdraw = f"DELETE FROM responses WHERE id = (SELECT min(id) FROM responses WHERE id > {first})"
    for n, (code, dsn) in enumerate(sources.items()):
        execute(
            dsn,
            [
                (careful, ("94.99995", "-0.00005", "600.4", "3.0", "99", "0.5")),
                (invalid, ("2.5", "1e5", " 0.5", "+500", ".5", "99999996")),
                (withdraw, ()),
            ],
        )
        cnt = "QAZ" if code == "ALB" else code.lower()
        insert(
            dsn, [student(-1 - n, cnt, "003", "0.12345", "-0.00005", "1530", "2.5", "450.0005", "1,5", None)]
        )


@pytest.mark.server
@pytest.mark.parametrize("mode", MODES)
def test_every_chart_equals_the_oracle_after_traffic(mode: str, new_dir: Path, shared: SharedServer) -> None:
    config, sources = up(shared, new_dir, "alb,arg,aus", rows=150)
    with serving("--data-dir", str(new_dir), "--mode", mode) as server:
        wait_ready(server.url, mode, len(sources))
        before = {code: oracle.ids_of(dsn) for code, dsn in sources.items()}
        started = time.time()
        traffic(config, operations=400)
        messy_changes(sources)
        stopped = time.time()
        new_rows = sum(oracle.rows_not_in(dsn, before[code]) for code, dsn in sources.items())
        arrivals, by_total = arrivals_of(mode, new_rows, started, stopped)
        totals = oracle.all_totals(sources)
        assert sum(t.rows for t in totals.values()) > 3 * 150
        assert_api_equals(
            server.url,
            mode,
            stopped,
            lambda asked, now: oracle.chart_bodies(totals, now, arrivals, split(asked)),
            by_total,
            lambda: oracle.exact_means(totals),
        )


def traffic(config: SourcesConfig, operations: int) -> None:
    """Live traffic on the sources until it has made `operations` changes."""
    writer = Traffic(config, rate=400, updates=0.15, deletes=0.1, messy=0.05, seed=7)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,))
    thread.start()
    try:
        wait_for(
            lambda: writer.counts.operations >= operations,
            60,
            what=f"{operations} operations of traffic",
            detail=writer.status,
        )
    finally:
        stop.set()
        thread.join()
    assert writer.counts.updated > 10 and writer.counts.deleted > 5
