"""Published PISA 2018 facts that the synthetic students are calibrated to.

The CSV files in `data/` are copies of the project's shared reference data (see its README and
SOURCES.md for where every number comes from): per-country statistics, the 1,118 variables of the
student questionnaire file CY07_MSU_STU_QQQ in file order, their value labels, and a BELONG
lookup by raw item sum. This module only reads them; it knows nothing about databases.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources

from pisa_pulse.errors import PisaPulseError

# The 20 country databases of the later course cohorts (CHARTS.md, "Data the original databases held").
DEFAULT_COUNTRIES = (
    "ALB", "ARG", "AUS", "AUT", "BEL", "BGR", "BIH", "BLR", "BRA", "BRN",
    "CAN", "CHE", "CHL", "COL", "CRI", "CZE", "DEU", "DNK", "DOM", "ESP",
)  # fmt: skip


@dataclass(frozen=True)
class Country:
    """One PISA 2018 participant as published (None where no source gave a figure)."""

    code: str  # PISA's CNT, upper case (ALB); the database name is its lower-case form
    cntryid: int
    name: str
    n_students: int | None
    n_female: int | None
    n_male: int | None
    read_mean: float | None
    math_mean: float | None
    sci_mean: float | None
    read_sd: float | None  # published SD (Türkiye only), else derived from microdata outputs
    math_sd: float | None
    sci_sd: float | None
    girls_minus_boys_read: float | None
    girls_minus_boys_math: float | None
    female_share_weighted: float | None

    @property
    def database(self) -> str:
        """The name of this country's database: its code in lower case."""
        return self.code.lower()


@dataclass(frozen=True)
class Variable:
    """One variable of the student questionnaire file, as the codebook describes it."""

    position: int
    name: str  # lower case, as the `responses` column is named
    label: str
    type: str  # id, categorical, numeric, string
    codes: tuple[str, ...]  # valid value codes of a categorical variable
    missing_codes: tuple[str, ...]  # PISA's codes for valid skip / not applicable / invalid / missing
    spss_format: str  # F8.3, A4, ...
    block: str
    valid_min: float | None
    valid_max: float | None

    @property
    def decimals(self) -> int:
        """Decimal places of the SPSS format (F8.3 -> 3); 0 for strings and integers."""
        if self.spss_format.startswith("F") and "." in self.spss_format:
            return int(self.spss_format.split(".", 1)[1])
        return 0


def _read_csv(name: str) -> list[dict[str, str]]:
    with resources.files(__package__).joinpath("data", name).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _opt_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def _opt_int(text: str) -> int | None:
    return int(text) if text.strip() else None


@functools.cache
def countries() -> dict[str, Country]:
    """All 79 PISA 2018 participants keyed by upper-case CNT code, in file order."""
    result = {}
    for row in _read_csv("country_stats.csv"):
        sd = {d: _opt_float(row[f"{d}_sd"]) for d in ("read", "math", "sci")}
        for d in ("read", "math"):
            if sd[d] is None:
                sd[d] = _opt_float(row[f"{d}_sd_derived"])
        result[row["iso3"]] = Country(
            code=row["iso3"],
            cntryid=int(row["cntryid"]),
            name=row["name"],
            n_students=_opt_int(row["n_students"]),
            n_female=_opt_int(row["n_female"]),
            n_male=_opt_int(row["n_male"]),
            read_mean=_opt_float(row["read_mean"]),
            math_mean=_opt_float(row["math_mean"]),
            sci_mean=_opt_float(row["sci_mean"]),
            read_sd=sd["read"],
            math_sd=sd["math"],
            sci_sd=sd["sci"],
            girls_minus_boys_read=_opt_float(row["girls_minus_boys_read"]),
            girls_minus_boys_math=_opt_float(row["girls_minus_boys_math"]),
            female_share_weighted=_opt_float(row["female_share_weighted"]),
        )
    return result


def _codes(field: str, name: str, labels: dict[str, list[tuple[str, bool]]]) -> tuple[str, ...]:
    """Valid codes from a `1=Yes;2=No` field, or from value_labels.csv for large sets."""
    if field.startswith("["):
        return tuple(code for code, missing in labels.get(name, []) if not missing)
    return tuple(part.split("=", 1)[0] for part in field.split(";") if "=" in part)


@functools.cache
def variables() -> tuple[Variable, ...]:
    """The 1,118 questionnaire variables in file order, names in lower case."""
    labels: dict[str, list[tuple[str, bool]]] = {}
    for row in _read_csv("value_labels.csv"):
        labels.setdefault(row["name"], []).append((row["code"], row["is_missing_code"] == "1"))
    return tuple(
        Variable(
            position=int(row["position"]),
            name=row["name"].lower(),
            label=row["label"],
            type=row["type"],
            codes=_codes(row["value_codes"], row["name"], labels),
            missing_codes=_codes(row["missing_codes"], row["name"], labels),
            spss_format=row["spss_format"],
            block=row["block"],
            valid_min=_opt_float(row["subset_valid_min"]),
            valid_max=_opt_float(row["subset_valid_max"]),
        )
        for row in _read_csv("variables.csv")
    )


@functools.cache
def belong_by_raw_sum() -> dict[int, float]:
    """Mean BELONG per raw sum of the six ST034 items (positive items reversed), 6..24."""
    return {int(row["sum"]): float(row["mean"]) for row in _read_csv("belong_rawsum_lookup.csv")}


def select_countries(spec: str | list[str] | None) -> list[Country]:
    """Countries named by `spec`: None or "default" (the 20), "all" (79), or codes such as "alb,ARG".

    Unknown codes raise a PisaPulseError naming them; duplicates are dropped, order kept.
    """
    known = countries()
    if spec is None or spec == "default":
        codes = list(DEFAULT_COUNTRIES)
    elif spec == "all":
        codes = list(known)
    else:
        parts = spec.split(",") if isinstance(spec, str) else spec
        codes = [p.strip().upper() for p in parts if p.strip()]
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise PisaPulseError(
            f"unknown country code {', '.join(unknown)}",
            "use PISA 2018 CNT codes such as alb,arg,aus, 'all' for the 79 participants, "
            "or 'default' for the 20 of the course",
        )
    if not codes:
        raise PisaPulseError("no countries given", "pass --countries default, all, or codes such as alb,arg")
    return [known[c] for c in dict.fromkeys(codes)]
