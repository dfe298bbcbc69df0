"""Codebook-driven text values: fast rendering, messy values, and the filler of the full layout.

The full `responses` table has about 1,000 columns that no chart reads. They are filled from the
codebook alone (a random valid code, a uniform value in the range seen in real records, `NA` where the
codebook gives no range), pre-rendered once per factory into a pool of rows, and kept as the
tab-joined runs of columns between two consecutive slim columns, so a full COPY line is a join of about
130 strings. `students.py` owns the calibrated columns; this module knows nothing about calibration.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pisa_pulse.pisa2018 import Country, Variable
from pisa_pulse.sources.schema import SLIM_NAMES, columns

NA = "NA"
POOL_ROWS = 2048

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Texts = npt.NDArray[np.object_]

_WHOLE_LIMIT = 10_000  # integer parts below this are rendered from a lookup table, larger ones by format()

# Optional questionnaires: a country either administered one or its columns are all NA. The shares are
# synthetic (roughly how many 2018 countries took each option), drawn once per country.
_OPTIONAL_BLOCKS = {
    "ICT familiarity questionnaire item": 0.75,
    "educational career questionnaire item": 0.4,
    "financial literacy questionnaire item (student)": 0.3,
    "parent questionnaire item": 0.25,
    "well-being questionnaire item": 0.15,
}
# Never made messy: identification, administration, weights and the variance-estimation design.
_CLEAN_BLOCKS = frozenset({"identifier", "administration", "weight", "variance estimation (BRR design)"})
_ITEM_NA = 0.06  # share of NA in a filler questionnaire item or index
# OECD members counted in the "OECD-37" averages (SOURCES.md); sets the country-constant `oecd` flag.
_OECD = frozenset(
    ("AUS", "AUT", "BEL", "CAN", "CHE", "CHL", "COL", "CZE", "DEU", "DNK", "ESP", "EST", "FIN", "FRA", "GBR",
     "GRC", "HUN", "IRL", "ISL", "ISR", "ITA", "JPN", "KOR", "LTU", "LUX", "LVA", "MEX", "NLD", "NOR", "NZL",
     "POL", "PRT", "SVK", "SVN", "SWE", "TUR", "USA")
)  # fmt: skip


# -- rendering ------------------------------------------------------------------------------------


@functools.cache
def _whole_table() -> Texts:
    """'0'..'9999' then '-0'..'-9999': integer parts by index (negative ones offset by the limit)."""
    pos = [str(i) for i in range(_WHOLE_LIMIT)]
    return np.array(pos + ["-" + p for p in pos], dtype=object)


@functools.cache
def _fraction_table(decimals: int) -> Texts:
    return np.array([f".{i:0{decimals}d}" for i in range(10**decimals)], dtype=object)


def fixed_text(values: F64, decimals: int) -> list[str]:
    """Values with exactly `decimals` places (SPSS F format), NaN as NA; no '-0.000'."""
    nan = np.isnan(values)
    scale = 10**decimals
    scaled = np.rint(np.where(nan, 0.0, values) * scale)
    big = np.abs(scaled) >= _WHOLE_LIMIT * scale
    if decimals > 4 or big.any():
        # Rare wide values (and 5-decimal weights) are formatted one by one: the tables stay small.
        fmt = f"{{:.{decimals}f}}".format
        out = [fmt(v + 0.0) for v in (scaled / scale).tolist()]
    else:
        ints = scaled.astype(np.int64)
        neg = ints < 0
        mag = np.abs(ints)
        whole = _whole_table()[mag // scale + neg * _WHOLE_LIMIT]
        text = whole if decimals == 0 else whole + _fraction_table(decimals)[mag % scale]
        out = text.tolist()
    if nan.any():
        for i in np.flatnonzero(nan).tolist():
            out[i] = NA
    return out


def int_text(values: I64) -> list[str]:
    """Non-negative integers below 10,000 as text; -1 (our missing marker) as NA."""
    return _int_table()[values].tolist()  # type: ignore[no-any-return]


@functools.cache
def _int_table() -> Texts:
    # Index -1 wraps round to the last entry, which is NA.
    return np.array([str(i) for i in range(_WHOLE_LIMIT)] + [NA], dtype=object)


# -- messy values ---------------------------------------------------------------------------------


def _messy(value: str, kind: int, missing_codes: tuple[str, ...], pick: int) -> str:
    """One value spoilt the way real submissions are: blank, padded, a missing code, or unparsable."""
    if kind == 0 or (kind == 1 and value == NA):
        return ""
    if kind == 1:
        return (f" {value}", f"{value} ", f" {value} ")[pick % 3]
    if kind == 2 and missing_codes:
        return missing_codes[pick % len(missing_codes)]
    return ("n/a", "-", value.replace(".", ",") if "." in value else "1,5")[pick % 3]


class Messifier:
    """Replaces a share of the values of some columns with values a robust reader must treat as missing."""

    def __init__(self, share: float, missing_codes: Sequence[tuple[str, ...]]) -> None:
        self.share = share
        self._codes = list(missing_codes)  # one tuple per column handed to `apply`, in that order

    def apply(self, rng: np.random.Generator, cols: list[list[str]]) -> None:
        """Spoil about `share` of the cells of `cols` (equal-length columns), in place."""
        if self.share <= 0 or not cols or not cols[0]:
            return
        n = len(cols[0])
        cells = n * len(cols)
        hits = int(rng.binomial(cells, self.share))
        if not hits:
            return
        # Positions drawn with replacement: a repeat just spoils a cell twice, and this costs O(hits).
        where = rng.integers(0, cells, hits).tolist()
        kinds = rng.integers(0, 4, hits).tolist()
        picks = rng.integers(0, 1 << 30, hits).tolist()
        for cell, kind, pick in zip(where, kinds, picks, strict=True):
            c, r = divmod(cell, n)
            col = cols[c]
            col[r] = _messy(col[r], kind, self._codes[c], pick)


# -- the full layout ------------------------------------------------------------------------------


@functools.cache
def full_layout() -> tuple[str | int, ...]:
    """The full row after `id`, in file order: slim column names, and for each run of filler columns
    between two of them the run's number (an index into `filler_runs()`)."""
    layout: list[str | int] = []
    runs = 0
    previous_filler = False
    for v in columns("full"):
        if v.name in SLIM_NAMES:
            layout.append(v.name)
            previous_filler = False
        elif not previous_filler:
            layout.append(runs)
            runs += 1
            previous_filler = True
    return tuple(layout)


@functools.cache
def filler_runs() -> tuple[tuple[Variable, ...], ...]:
    """The runs of consecutive filler (non-slim) columns of the full layout, in file order."""
    runs: list[list[Variable]] = []
    previous_filler = False
    for v in columns("full"):
        if v.name in SLIM_NAMES:
            previous_filler = False
            continue
        if not previous_filler:
            runs.append([])
        runs[-1].append(v)
        previous_filler = True
    return tuple(tuple(r) for r in runs)


def country_prefixed(codes: Sequence[str], country: Country, digits: int = 4) -> list[str]:
    """The codes of a country-keyed variable that belong to `country` (they start with its CNTRYID)."""
    prefix = f"{country.cntryid:0{digits}d}"
    return [c for c in codes if c.startswith(prefix)]


def administered_blocks(country: Country) -> frozenset[str]:
    """Which optional questionnaires this country took (synthetic, fixed per country)."""
    rng = np.random.default_rng([country.cntryid, 7001])
    draws = rng.random(len(_OPTIONAL_BLOCKS))
    return frozenset(b for (b, p), u in zip(_OPTIONAL_BLOCKS.items(), draws, strict=True) if u < p)


def _sampled(values: list[str], rng: np.random.Generator, n: int, na_share: float) -> list[str]:
    """n values drawn uniformly from `values`, about `na_share` of them NA."""
    table = np.array([*values, NA], dtype=object)
    picked = rng.integers(0, len(values), n)
    if na_share:
        picked[rng.random(n) < na_share] = len(values)
    return table[picked].tolist()  # type: ignore[no-any-return]


class FillerPool:
    """`size` pre-rendered rows of the filler columns, kept as one tab-joined segment per run."""

    def __init__(self, country: Country, rng: np.random.Generator, messy: float, size: int = POOL_ROWS):
        self.size = size
        self._country = country
        self._skipped = frozenset(_OPTIONAL_BLOCKS) - administered_blocks(country)
        self._segments: list[Texts] = []
        for run in filler_runs():
            values = [self._column(v, rng) for v in run]
            spoilable = [i for i, v in enumerate(run) if v.block not in _CLEAN_BLOCKS and v.type != "string"]
            Messifier(messy, [run[i].missing_codes for i in spoilable]).apply(
                rng, [values[i] for i in spoilable]
            )
            self._segments.append(
                np.array(["\t".join(row) for row in zip(*values, strict=True)], dtype=object)
            )

    def pick(self, rng: np.random.Generator, n: int) -> list[list[str]]:
        """One segment list per run for n students, each student getting one random pool row."""
        rows = rng.integers(0, self.size, n)
        return [seg[rows].tolist() for seg in self._segments]

    def _column(self, v: Variable, rng: np.random.Generator) -> list[str]:
        """The pool's values of one filler column."""
        n = self.size
        fixed = self._constant(v)
        if fixed is not None:
            return [fixed] * n
        if v.block in self._skipped:
            return [NA] * n
        na_share = 0.0 if v.block in _CLEAN_BLOCKS else _ITEM_NA
        if v.name.startswith("w_fsturwt"):  # replicate weights scatter like W_FSTUWT (median about 15)
            return _sampled(
                fixed_text(15.0 * np.exp(0.55 * rng.standard_normal(256)), v.decimals), rng, n, 0.0
            )
        if v.name == "grade":  # mostly the modal grade
            return fixed_text(rng.choice([-1.0, 0.0, 1.0], n, p=[0.12, 0.8, 0.08]), v.decimals)
        codes = self._codes(v)
        if codes:
            return _sampled(list(codes), rng, n, na_share)
        if v.type == "numeric" and v.valid_min is not None and v.valid_max is not None:
            # A few hundred distinct values per column are plenty for filler and cheap to render.
            return _sampled(
                fixed_text(rng.uniform(v.valid_min, v.valid_max, 256), v.decimals), rng, n, na_share
            )
        return [NA] * n

    def _constant(self, v: Variable) -> str | None:
        """Values that are one per country (or per file) in the real data."""
        c = self._country
        constants = {
            "cyc": "07MS",
            "natcen": f"{c.cntryid:04d}00",
            "oecd": "1" if c.code in _OECD else "0",
            "adminmode": "2",  # computer-based, as in most 2018 countries
            "ver_dat": "09MAY19:11:08:36",  # synthetic creation stamp
        }
        if v.name == "subnatio":
            own = country_prefixed(v.codes, c, digits=3)
            return own[0] if own else f"{c.cntryid:03d}0000"
        return constants.get(v.name)

    def _codes(self, v: Variable) -> tuple[str, ...]:
        """The codes a filler column draws from: the country's own where codes are country-keyed."""
        c = self._country
        if v.name == "stratum":
            return tuple(x for x in v.codes if x.startswith(c.code)) or (f"{c.code}0101",)
        if v.name.startswith("cobn_"):
            own = f"{c.cntryid:04d}00"
            # About nine in ten born in the country, the rest anywhere on the list.
            return (own,) * (9 * len(v.codes)) + v.codes if own in v.codes else v.codes
        if v.name == "progn":
            return tuple(country_prefixed(v.codes, c)) or v.codes
        return v.codes
