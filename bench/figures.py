"""Small statistics the benchmarks share."""

from __future__ import annotations


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys against xs (0 for fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def per_second(count: float, seconds: float) -> float:
    """A rate as a figure: whole from 100 up, else two decimals (direct mode answers < 1/s)."""
    rate = float(count) / seconds
    return round(rate) if rate >= 100 else round(rate, 2)
