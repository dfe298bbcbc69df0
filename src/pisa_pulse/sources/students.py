"""Calibrated synthetic PISA 2018 students, rendered as PostgreSQL COPY text lines.

A `StudentFactory` draws the students of one country from one seed: the same seed, country, schema
and sequence of calls give the same lines, and a slim and a full factory with the same seed give the
same values in the slim columns. Values are text as the course databases stored them: the codebook's
SPSS decimals and `NA` for missing (a few % per questionnaire item; indices NA where their rules say
so; identifiers, gender, weight and PVs never NA). At the `messy` share, values of the questionnaire,
index and PV columns are replaced by what a robust reader must treat as missing: an empty string, the
value padded with blanks, one of the variable's PISA missing codes, or unparsable text ('n/a', '-',
'512,345'). id, cnt, cntryid, cntschid, cntstuid and w_fstuwt are never messy.

Published figures the students reproduce (pisa2018/data; sources in SOURCES.md):
- each country's mean reading, mathematics and science score (W_FSTUWT-weighted mean of the ten PVs);
- its girls-minus-boys gap in reading and mathematics, and its female share (sample counts);
- its reading and mathematics SD (derived from published microdata outputs; published for Türkiye,
  which also has a published science SD);
- the index rules of INDICES.md: MISCED/FISCED from ST005-ST008, HISCED, PAREDINT years, HISEI as the
  higher parent's ISEI (17.00 for codes 9701-9703), the ESCS formula and its missing rule, DURECEC,
  TMINS/LMINS/MMINS/SMINS with their validity rules, BELONG from the published mean-BELONG-per-raw-sum
  table (at least three valid items);
- the codebook: names, codes, missing codes, formats and value ranges of all 1,118 variables.

Synthetic (no source was reachable; chosen to be plausible and stated here):
- science SD: the mean of the country's reading and mathematics SDs (OECD 93.54 where there are none);
  science gap +3 points everywhere; a missing reading or maths gap or SD: the OECD average;
- Spain's reading mean (not published): the mean of its mathematics and science means;
- ability correlates 0.45 with a latent socio-economic status; PV measurement noise is 12% of the
  within-gender variance (the ten PVs differ but keep the country SD);
- country ESCS levels: 0.0115 x (mean of the three domain means - 485), clipped to [-1.3, 0.6];
- the components' distributions (parents' ISCED levels, ISEI, HOMEPOS in [-7, 4]); the ISCO-08 -> ISEI
  link (each code gets one fixed ISEI inside a band for its major group, so OCOD1/OCOD2 agree with
  BMMJ1/BFMJ2 at major-group level only); the item models of HOMEPOS and BELONG (BELONG = table value
  + N(0, 0.05)); the imputed ESCS component (the student's own unreported value, a draw given the
  other two);
- per-country habits: class periods and minutes, school-start age, early-education start and
  non-attendance; item non-response rates; final weights (lognormal, median 15, independent of
  everything); school and student numbers;
- the filler columns (see filler.py) and which optional questionnaires a country took.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import Country, belong_by_raw_sum, variables
from pisa_pulse.sources.filler import (
    F64,
    I64,
    NA,
    FillerPool,
    Messifier,
    country_prefixed,
    fixed_text,
    full_layout,
    int_text,
)
from pisa_pulse.sources.schema import SchemaName, columns

DOMAINS = ("math", "read", "scie")  # file order of the PV blocks
_OECD_SD = {"math": 90.55, "read": 99.39, "scie": 93.54}  # published OECD averages (SOURCES.md, S3)
_OECD_GAP = {"math": -5.2, "read": 29.7}  # mean of the OECD-37 rows (SOURCES.md, section 3)
_SCIENCE_GAP = 3.0  # synthetic: small, girls ahead, as in most countries
_RHO_SES = 0.45  # ability ~ latent SES
_DOMAIN_SHARE = 0.8  # share of the non-SES ability common to the three domains
_PV_NOISE = 0.12  # measurement share of the within-gender variance
_R_COMPONENT = 0.8  # each ESCS component ~ latent SES
_R_PARENT = 0.85  # each parent's education / occupation ~ the family's component
_ESCS = (-3.213722, 0.019053, 0.160317, 0.423198)  # INDICES.md, verified on real records
_PAREDINT_YEARS = np.array([3.0, 6.0, 9.0, 12.0, 12.0, 14.5, 16.0, np.nan])  # index -1 -> NaN
_ED_CUTS = np.array([-2.05, -1.48, -0.88, -0.55, 0.15, 0.5])  # one parent's ISCED 0..6 on a N(0,1) latent
_NEVER_MESSY = frozenset({"cnt", "cntryid", "cntschid", "cntstuid", "w_fstuwt"})

# Non-response: whole-section skips and single items (synthetic, a few % as in real files).
_SKIP_FAMILY, _SKIP_BELONG, _SKIP_TIME = 0.02, 0.03, 0.02
_NA_ITEM = 0.03

# HOMEPOS items (schema order) as thresholds on HOMEPOS + logistic noise: a binary item is "yes" above
# its one threshold; ST012 counts 1..4 and ST013 books 1..6 step up at each threshold passed.
_HOMEPOS_CUTS: tuple[tuple[float, ...], ...] = (
    *((d,) for d in (-2.2, -1.3, -2.0, -1.2, 0.2, -1.8, 0.0, 0.3, 0.2, -1.5, 0.0, -1.8, 0.6)),  # ST011
    (-0.3,), (0.2,), (0.6,),  # ST011D17-19, country-specific wealth items
    (-3.0, -1.0, 0.3), (-1.5, 0.0, 1.4), (-2.5, 0.2, 1.6),  # TVs, cars, bathrooms
    (-3.5, -2.5, -1.2), (-1.8, -0.4, 0.8), (-0.6, 0.6, 1.8), (0.4, 1.6, 2.6), (-0.4, 0.8, 1.8),
    (-2.0, -0.8, 0.3, 1.2, 2.0),  # books
)  # fmt: skip
_BINARY_ITEMS = 16
_HOMEPOS_NAMES = (
    [f"st011q{i:02d}ta" for i in range(1, 13)]
    + ["st011q16na", "st011d17ta", "st011d18ta", "st011d19ta", "st012q01ta", "st012q02ta", "st012q03ta"]
    + [f"st012q{i:02d}na" for i in range(5, 10)]
    + ["st013q01ta"]
)
_BELONG_CUTS = np.array([-2.1, -1.1, 0.75])  # recoded 1..4 (higher = more belonging)
_BELONG_POSITIVE = np.array([False, True, True, False, True, False])  # Q02, Q03, Q05 are reversed
# ISEI-08 bands per ISCO-08 major group (synthetic: no ISCO -> ISEI table was available).
_ISEI_BANDS = {"0": (30, 60), "1": (52, 75), "2": (62, 88.96), "3": (42, 68), "4": (33, 52),
               "5": (22, 45), "6": (11.01, 30), "7": (22, 40), "8": (20, 36), "9": (11.01, 28)}  # fmt: skip
_NOT_WORKING = ("9701", "9702", "9703", "9704", "9705")  # 9701-9703 have ISEI 17, 9704-9705 none


@dataclass(frozen=True)
class _Calibration:
    """What one country's students are drawn to match (published where the data has it)."""

    female_share: float
    mean: tuple[float, ...]  # math, read, scie
    sd: tuple[float, ...]
    gap: tuple[float, ...]  # girls minus boys
    escs_level: float  # synthetic
    # synthetic habits
    periods: float  # class periods per week
    minutes: float  # minutes per period
    primary_start: F64  # cumulative P(ST126 code 1..7)
    ecec_cuts: F64  # ages 1..6 of starting ISCED 0 on a N(0,1) latent
    not_attended: float
    schools: int


@functools.cache
def _calibration(c: Country) -> _Calibration:
    if c.n_female and c.n_male:
        female = c.n_female / (c.n_female + c.n_male)
    else:
        female = c.female_share_weighted or 0.5
    given = {"math": c.math_mean, "read": c.read_mean, "scie": c.sci_mean}
    known = [m for m in given.values() if m is not None]
    # A missing mean (Spain's reading) is the mean of the country's other domains: synthetic.
    mean = {d: m if m is not None else sum(known) / len(known) for d, m in given.items()}
    read_sd, math_sd = c.read_sd or _OECD_SD["read"], c.math_sd or _OECD_SD["math"]
    if c.sci_sd is not None:
        sci_sd = c.sci_sd
    elif c.read_sd is not None and c.math_sd is not None:
        sci_sd = (c.read_sd + c.math_sd) / 2
    else:
        sci_sd = _OECD_SD["scie"]
    gaps = (
        c.girls_minus_boys_math if c.girls_minus_boys_math is not None else _OECD_GAP["math"],
        c.girls_minus_boys_read if c.girls_minus_boys_read is not None else _OECD_GAP["read"],
        _SCIENCE_GAP,
    )
    level = float(np.clip(0.0115 * (sum(mean.values()) / 3 - 485.0), -1.3, 0.6))
    rng = np.random.default_rng([c.cntryid, 2018])  # the country's habits do not depend on the seed
    start = ([0.005, 0.02, 0.15, 0.75, 0.06, 0.01, 0.005],  # mostly at 6
             [0.01, 0.05, 0.7, 0.2, 0.03, 0.005, 0.005],  # mostly at 5
             [0.005, 0.01, 0.03, 0.2, 0.7, 0.05, 0.005])[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]  # fmt: skip
    return _Calibration(
        female_share=female,
        mean=tuple(mean[d] for d in DOMAINS),
        sd=(math_sd, read_sd, sci_sd),
        gap=gaps,
        escs_level=level,
        periods=float(rng.uniform(27.0, 35.0)),
        minutes=float(rng.uniform(41.0, 50.0)),
        primary_start=np.cumsum(start) / sum(start),
        ecec_cuts=np.array([-1.6, -0.9, 0.3, 1.2, 1.9]) + rng.uniform(-0.5, 0.5),
        not_attended=float(np.clip(0.05 - 0.04 * level + rng.uniform(-0.02, 0.02), 0.01, 0.15)),
        schools=max(40, round((c.n_students or 6000) / 30)),
    )


@dataclass(frozen=True)
class _Occupations:
    """ISCO-08 codes sorted by their synthetic ISEI, then the non-occupation codes and NA."""

    isei: F64
    text: npt.NDArray[np.object_]

    @property
    def working(self) -> int:
        return len(self.isei)


@functools.cache
def _occupations() -> _Occupations:
    ocod1 = next(v for v in variables() if v.name == "ocod1")
    codes = sorted(c for c in ocod1.codes if c not in _NOT_WORKING)
    isei: dict[str, float] = {}
    for group, (lo, hi) in _ISEI_BANDS.items():
        members = [c for c in codes if c[0] == group]
        for rank, code in enumerate(members):  # spread a group's codes evenly over its band
            isei[code] = round(lo + (hi - lo) * rank / max(1, len(members) - 1), 2)
    ordered = sorted(isei, key=lambda code: (isei[code], code))
    return _Occupations(
        np.array([isei[c] for c in ordered]), np.array([*ordered, *_NOT_WORKING, NA], dtype=object)
    )


@functools.cache
def _homepos_cuts() -> F64:
    """_HOMEPOS_CUTS as a matrix, padded with +inf (a threshold nobody passes)."""
    cuts = np.full((len(_HOMEPOS_CUTS), 5), np.inf)
    for i, item_cuts in enumerate(_HOMEPOS_CUTS):
        cuts[i, : len(item_cuts)] = item_cuts
    return cuts


@functools.cache
def _wealth_codes(name: str, country: Country) -> npt.NDArray[np.object_]:
    """[yes, no, NA] codes of a country-specific wealth item; all NA where the country had none."""
    variable = next(v for v in variables() if v.name == name)
    own = sorted(country_prefixed(variable.codes, country))
    return np.array([*own[:2], NA] if len(own) >= 2 else [NA, NA, NA], dtype=object)


def _blank(rng: np.random.Generator, values: I64, share: float, skipped: npt.NDArray[np.bool_]) -> I64:
    """Item non-response: -1 (NA) at random, and everywhere for students who skipped the section."""
    gone = rng.random(values.shape) < share
    gone |= skipped.reshape(skipped.shape + (1,) * (values.ndim - 1))
    return np.where(gone, -1, values)


def _isced(school: I64, yes_no: I64) -> I64:
    """MISCED/FISCED by the INDICES.md rule from ST005/ST007 and ST006/ST008 (-1 = missing)."""
    level = np.full(school.shape, -1)
    for code, isced in ((5, 0), (4, 1), (3, 2), (2, 3), (1, 4)):
        level[school == code] = isced
    # The rule is an if/elif chain from the top; applying its branches bottom-up gives the same result.
    level[yes_no[..., 3] == 1] = 4
    level[yes_no[..., 2] == 1] = 5
    level[(yes_no[..., 0] == 1) | (yes_no[..., 1] == 1)] = 6
    return level


def _sigmoid(x: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-x))


class _Cohort:
    """One batch of students: draws every slim column as text into `out`, by topic."""

    def __init__(self, rng: np.random.Generator, cal: _Calibration, country: Country, n: int) -> None:
        self.rng, self.cal, self.country, self.n = rng, cal, country, n
        self.out: dict[str, list[str]] = {}
        self.female = rng.random(n) < cal.female_share
        self.ses = rng.standard_normal(n)  # latent socio-economic status, N(0, 1) within the country

    def draw(self) -> dict[str, list[str]]:
        n, c, out = self.n, self.country, self.out
        out["cntryid"] = [str(c.cntryid)] * n
        out["cnt"] = [c.code] * n
        base = c.cntryid * 100_000
        out["cntschid"] = list(map(str, (base + self.rng.integers(1, self.cal.schools + 1, n)).tolist()))
        out["cntstuid"] = list(map(str, (base + self.rng.integers(1, 100_000, n)).tolist()))
        out["st004d01t"] = int_text(np.where(self.female, 1, 2))
        self._family()
        self._belonging()
        self._early_education()
        self._learning_time()
        self._performance()
        out["w_fstuwt"] = fixed_text(15.0 * np.exp(0.5 * self.rng.standard_normal(n)), 5)
        return out

    def _family(self) -> None:
        """Parents' education and occupations, home possessions, and the ESCS built from them."""
        rng, n, out = self.rng, self.n, self.out
        skipped = rng.random(n) < _SKIP_FAMILY
        # Three components (HOMEPOS, education, occupation) share the latent SES; country shift m.
        m = (self.cal.escs_level + 0.14) / 1.1
        comp = (
            m
            + _R_COMPONENT * self.ses[:, None]
            + math.sqrt(1 - _R_COMPONENT**2) * rng.standard_normal((n, 3))
        )
        parent = math.sqrt(1 - _R_PARENT**2)

        # Education: each parent's ISCED level, then raw answers that the rule maps back to it.
        level = np.searchsorted(_ED_CUTS, _R_PARENT * comp[:, 1:2] + parent * rng.standard_normal((n, 2)))
        u = rng.random((n, 2, 5))
        school = np.where(level >= 4, 1, 5 - level)
        via_isced4 = (level == 4) & (u[..., 0] < 0.2)
        school = np.where(via_isced4 | ((level >= 5) & (u[..., 0] < 0.1)), 2, school)
        yes = np.empty((n, 2, 4), dtype=bool)
        yes[..., 0] = (level == 6) & (u[..., 1] < 0.25)
        yes[..., 1] = (level == 6) & (~yes[..., 0] | (u[..., 2] < 0.6))
        yes[..., 2] = (level == 5) | ((level == 6) & (u[..., 3] < 0.15))
        yes[..., 3] = via_isced4 | ((level == 4) & (u[..., 4] < 0.3)) | ((level >= 5) & (u[..., 4] < 0.15))
        school = _blank(rng, school, _NA_ITEM, skipped)
        yes_no = _blank(rng, np.where(yes, 1, 2), _NA_ITEM, skipped)
        isced = _isced(school, yes_no)
        hisced = isced.max(axis=1)
        for p, (q_school, q_quals) in enumerate((("st005q01ta", "st006"), ("st007q01ta", "st008"))):
            out[q_school] = int_text(school[:, p])
            for k in range(4):
                out[f"{q_quals}q{k + 1:02d}ta"] = int_text(yes_no[:, p, k])
        out["misced"], out["fisced"] = int_text(isced[:, 0]), int_text(isced[:, 1])
        out["hisced"] = int_text(hisced)
        paredint = _PAREDINT_YEARS[hisced]
        out["paredint"] = fixed_text(paredint, 2)

        # Occupations: an ISCO code near each parent's ISEI; some mothers at home, some on benefits.
        occ = _occupations()
        latent = _R_PARENT * comp[:, 2:3] + parent * rng.standard_normal((n, 2))
        code = np.minimum(np.searchsorted(occ.isei, 44.0 + 19.0 * latent), occ.working - 1)
        u = rng.random((n, 2, 4))
        home = np.zeros((n, 2), dtype=bool)
        home[:, 0] = u[:, 0, 0] < _sigmoid(-2.0 - 0.9 * latent[:, 0])
        benefits = ~home & (u[..., 1] < _sigmoid(-3.5 - 0.6 * latent))
        code = np.where(home, occ.working, np.where(benefits, occ.working + 2, code))
        isei = np.where(code >= occ.working, 17.0, occ.isei[np.minimum(code, occ.working - 1)])
        unknown = u[..., 2] < 0.03  # "do not know" / "vague": a code but no ISEI
        code = np.where(unknown, occ.working + 3 + (u[..., 3] < 0.5), code)
        code = _blank(rng, code, _NA_ITEM, skipped)
        reported = np.where((code >= 0) & (code < occ.working + 3), isei, np.nan)
        out["ocod1"], out["ocod2"] = occ.text[code[:, 0]].tolist(), occ.text[code[:, 1]].tolist()
        out["bmmj1"], out["bfmj2"] = fixed_text(reported[:, 0], 2), fixed_text(reported[:, 1], 2)
        hisei = np.fmax(reported[:, 0], reported[:, 1])
        out["hisei"] = fixed_text(hisei, 2)

        homepos_true: F64 = np.clip(comp[:, 0], -7.0, 4.0).round(4)
        homepos = self._possessions(homepos_true, skipped)

        # ESCS from the three components as reported; one missing is imputed with the student's own
        # unreported value (a draw given the other two), two or more missing leave ESCS missing.
        reported_parts = np.stack([hisei, paredint, homepos])
        true_parts = np.stack([isei.max(axis=1), _PAREDINT_YEARS[level.max(axis=1)], homepos_true])
        parts = np.where(np.isnan(reported_parts), true_parts, reported_parts)
        escs = _ESCS[0] + _ESCS[1] * parts[0] + _ESCS[2] * parts[1] + _ESCS[3] * parts[2]
        out["escs"] = fixed_text(np.where(np.isnan(reported_parts).sum(axis=0) >= 2, np.nan, escs), 4)

    def _possessions(self, homepos: F64, skipped: npt.NDArray[np.bool_]) -> F64:
        """The 25 HOMEPOS items from the index; returns HOMEPOS as reported (NaN under 3 valid items)."""
        rng, n, out = self.rng, self.n, self.out
        latent = homepos[:, None] + 0.6 * rng.logistic(size=(n, len(_HOMEPOS_CUTS)))
        steps = (latent[:, :, None] > _homepos_cuts()[None]).sum(axis=2)
        answers = np.where(np.arange(len(_HOMEPOS_CUTS)) < _BINARY_ITEMS, 2 - steps, 1 + steps)
        answers = _blank(rng, answers, _NA_ITEM, skipped)
        for i, name in enumerate(_HOMEPOS_NAMES):
            if name.startswith("st011d"):
                # Country-specific wealth items: codes CCCC001 yes / CCCC002 no, NA where not asked.
                table = _wealth_codes(name, self.country)
                if table[0] == NA:
                    answers[:, i] = -1
                out[name] = table[np.where(answers[:, i] < 0, 2, answers[:, i] - 1)].tolist()
            else:
                out[name] = int_text(answers[:, i])
        reported = np.where((answers >= 0).sum(axis=1) >= 3, homepos, np.nan)
        out["homepos"] = fixed_text(reported, 4)
        return reported

    def _belonging(self) -> None:
        """ST034 items from a latent belonging; BELONG from the raw-sum table plus a little noise."""
        rng, n, out = self.rng, self.n, self.out
        latent = 0.15 * self.ses + math.sqrt(1 - 0.15**2) * rng.standard_normal(n)
        recoded = 1 + (latent[:, None, None] + 0.8 * rng.standard_normal((n, 6, 1)) > _BELONG_CUTS).sum(
            axis=2
        )
        raw = _blank(
            rng, np.where(_BELONG_POSITIVE, 5 - recoded, recoded), _NA_ITEM, rng.random(n) < _SKIP_BELONG
        )
        for i in range(6):
            out[f"st034q{i + 1:02d}ta"] = int_text(raw[:, i])
        valid = raw >= 0
        count = valid.sum(axis=1)
        total = np.where(valid, np.where(_BELONG_POSITIVE, 5 - raw, raw), 0).sum(axis=1)
        full_sum = np.rint(total * 6 / np.maximum(count, 1)).astype(np.int64)  # scaled to six items
        table = np.full(25, np.nan)
        for raw_sum, mean in belong_by_raw_sum().items():
            table[raw_sum] = mean
        belong = table[full_sum] + 0.05 * rng.standard_normal(n)
        out["belong"] = fixed_text(np.where(count >= 3, belong, np.nan), 4)

    def _early_education(self) -> None:
        """Ages at starting ISCED 0 and ISCED 1, and DURECEC by the INDICES.md rule."""
        rng, n, cal, out = self.rng, self.n, self.cal, self.out
        primary = 1 + np.searchsorted(cal.primary_start, rng.random(n) * cal.primary_start[-1])
        primary = np.minimum(primary, 7)
        # Higher status, earlier start and less often none at all.
        ecec = 1 + np.searchsorted(cal.ecec_cuts, rng.standard_normal(n) - 0.3 * self.ses)
        logit = math.log(cal.not_attended / (1 - cal.not_attended))
        u = rng.random((n, 2))
        ecec = np.where(u[:, 0] < _sigmoid(logit - 0.5 * self.ses), 7, ecec)
        ecec = np.where(u[:, 1] < 0.06, 8, ecec)  # "I do not remember"
        none = np.zeros(n, dtype=bool)
        ecec, primary = _blank(rng, ecec, _NA_ITEM, none), _blank(rng, primary, _NA_ITEM, none)
        years = primary + 2 - ecec
        valid = (ecec >= 1) & (ecec <= 6) & (primary >= 1) & (years >= 0)
        out["st125q01na"], out["st126q01ta"] = int_text(ecec), int_text(primary)
        out["durecec"] = int_text(np.where(valid, years, -1))

    def _learning_time(self) -> None:
        """Periods and minutes per week, subject periods, and TMINS/LMINS/MMINS/SMINS."""
        rng, n, cal, out = self.rng, self.n, self.cal, self.out
        periods = np.rint(rng.normal(cal.periods, 3.5, n))
        minutes = 5 * np.rint(rng.normal(cal.minutes, 4.0, n) / 5)
        u = rng.random((n, 3))
        periods = np.where(u[:, 0] < 0.015, rng.integers(40, 81, n), periods)  # implausibly many
        periods = np.where(u[:, 1] < 0.01, rng.integers(10, 15, n), periods)  # fewer than the subjects
        minutes = np.where(u[:, 2] < 0.01, rng.choice([90, 100, 120], n), minutes)
        subjects = np.rint(rng.normal([4.5, 4.3, 3.8], [1.2, 1.0, 1.6], (n, 3)))
        subjects = np.clip(subjects, 0, [35, 10, 24]).astype(np.int64)
        skipped = rng.random(n) < _SKIP_TIME
        periods = _blank(rng, np.clip(periods, 10, 80).astype(np.int64), _NA_ITEM, skipped)
        minutes = _blank(rng, np.clip(minutes, 10, 120).astype(np.int64), _NA_ITEM, skipped)
        subjects = _blank(rng, subjects, _NA_ITEM, skipped)
        total = periods * minutes
        valid = (periods >= 0) & (minutes >= 0) & (total <= 3000)
        valid &= np.maximum(subjects, 0).sum(axis=1) <= periods
        out["st060q01na"], out["st061q01na"] = int_text(periods), int_text(minutes)
        out["tmins"] = int_text(np.where(valid, total, -1))
        for k, (item, index) in enumerate(
            (("st059q01ta", "lmins"), ("st059q02ta", "mmins"), ("st059q03ta", "smins"))
        ):
            out[item] = int_text(subjects[:, k])
            out[index] = int_text(
                np.where((subjects[:, k] >= 0) & (minutes >= 0), subjects[:, k] * minutes, -1)
            )

    def _performance(self) -> None:
        """Ten PVs per domain: gender mean + ability (partly SES) + measurement noise."""
        rng, n, cal, out = self.rng, self.n, self.cal, self.out
        p_f = cal.female_share
        common = rng.standard_normal(n)
        own = rng.standard_normal((n, 3))
        noise = rng.standard_normal((n, 3, 10))
        rest = math.sqrt(1 - _RHO_SES**2)
        for j, domain in enumerate(DOMAINS):
            mean, sd, gap = cal.mean[j], cal.sd[j], cal.gap[j]
            # Gender means around the published mean; within-gender SD keeps the total SD.
            mu = np.where(self.female, mean + (1 - p_f) * gap, mean - p_f * gap)
            within = math.sqrt(max(sd**2 - p_f * (1 - p_f) * gap**2, 1.0))
            z = _RHO_SES * self.ses + rest * (
                math.sqrt(_DOMAIN_SHARE) * common + math.sqrt(1 - _DOMAIN_SHARE) * own[:, j]
            )
            ability = mu + within * math.sqrt(1 - _PV_NOISE) * z
            pvs = fixed_text((ability[:, None] + within * math.sqrt(_PV_NOISE) * noise[:, j]).reshape(-1), 3)
            for k in range(10):
                out[f"pv{k + 1}{domain}"] = pvs[k::10]


class StudentFactory:
    """Deterministic calibrated students of one country, as COPY lines or slim value tuples."""

    def __init__(self, country: Country, schema: SchemaName, seed: int = 42, messy: float = 0.01) -> None:
        if not 0.0 <= messy <= 1.0:
            raise PisaPulseError(f"messy share {messy} is not between 0 and 1", "pass a share such as 0.01")
        self.country = country
        self.schema: SchemaName = schema
        self.messy = messy
        # Separate streams: the students do not depend on the schema or on how messy the values are.
        students, spoil, pool, picks = np.random.SeedSequence([seed, country.cntryid]).spawn(4)
        self._rng = np.random.default_rng(students)
        self._spoil_rng = np.random.default_rng(spoil)
        self._pick_rng = np.random.default_rng(picks)
        self._cal = _calibration(country)
        slim = columns("slim")
        self._slim_names = tuple(v.name for v in slim)
        self._spoilable = [i for i, v in enumerate(slim) if v.name not in _NEVER_MESSY]
        self._messifier = Messifier(messy, [slim[i].missing_codes for i in self._spoilable])
        self._pool: FillerPool | None = None
        self._layout: list[tuple[bool, int]] = []  # (is a filler run, index) per piece after the id
        if schema == "full":
            self._pool = FillerPool(country, np.random.default_rng(pool), messy)
            where = {name: i for i, name in enumerate(self._slim_names)}
            self._layout = [
                (isinstance(p, int), p if isinstance(p, int) else where[p]) for p in full_layout()
            ]

    def copy_lines(self, ids: Sequence[int]) -> list[str]:
        """One COPY text-format line per id (tab-separated, ending in '\\n'), fields in
        column_names(schema) order, first field the id."""
        n = len(ids)
        if n == 0:
            return []
        cols = self._columns(n)
        id_text = list(map(str, map(int, ids)))
        if self._pool is None:
            pieces = cols
        else:
            runs = self._pool.pick(self._pick_rng, n)
            pieces = [runs[i] if is_run else cols[i] for is_run, i in self._layout]
        return ["\t".join(row) + "\n" for row in zip(id_text, *pieces, strict=True)]

    def slim_values(self, n: int) -> list[tuple[str, ...]]:
        """n fresh students' values for the columns of columns("slim"), in that order (used to UPDATE
        a row as a correction; in a full table these are the same columns)."""
        if n <= 0:
            return []
        return list(zip(*self._columns(n), strict=True))

    def _columns(self, n: int) -> list[list[str]]:
        """n students' slim columns as text, in slim order, with the messy share applied."""
        drawn = _Cohort(self._rng, self._cal, self.country, n).draw()
        cols = [drawn[name] for name in self._slim_names]
        self._messifier.apply(self._spoil_rng, [cols[i] for i in self._spoilable])
        return cols
