"""Statistics of repeated runs, in plain Python (no SciPy): the mean, sample standard deviation, count and Student-t
confidence interval of a set of values (:func:`estimate`), and of paired differences over the same seeds
(:func:`paired_difference`).

The Student-t quantile comes from the regularized incomplete beta function (a continued fraction, as in Numerical
Recipes' ``betacf``) and bisection; it is exact to about 1e-12 for any degrees of freedom, so the 95% interval of
3 seeds uses t(0.975, 2) = 4.303, not the normal 1.96.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

CONFIDENCE = 0.95
"""Confidence level of every interval the report gives."""

_TINY = 1e-300
_EPS = 1e-15


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` independent values (seeds) with their sample standard deviation (ddof 1) and the Student-t
    confidence interval of the mean. ``std`` is NaN for one value, and the interval for fewer than two."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    confidence: float = CONFIDENCE

    def format(self, digits: int = 2, signed: bool = False, label_ci: bool = True) -> str:
        """``81.39 ± 0.52 (n=3), 95% CI [80.10, 82.68]``; one value: ``81.39 (n=1)``; none: empty.

        ``signed``: a ``+`` on positive means (differences). ``label_ci`` False drops the ``, 95% CI`` words
        (table cells, whose header says what the brackets are).
        """
        return format_estimate(self.mean, self.std, self.n, self.ci_low, self.ci_high, digits, signed, label_ci)


def estimate(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std, n and the ``confidence`` Student-t interval of the mean of ``values`` (NaNs left out)."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    n = len(finite)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan, confidence)
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else math.nan
    low, high = confidence_interval(mean, std, n, confidence)
    return Estimate(mean, std, n, low, high, confidence)


def paired_difference(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], confidence: float = CONFIDENCE
) -> Estimate:
    """The mean difference ``a - b`` over the keys (seeds) both have, with the paired Student-t interval: the
    interval of the mean of the per-key differences, which removes what the seed does to both."""
    return estimate([a[key] - b[key] for key in a if key in b], confidence)


def confidence_interval(mean: float, std: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Student-t interval ``mean ± t((1 + confidence) / 2, n - 1) * std / sqrt(n)``; NaNs for ``n < 2``."""
    if n < 2 or math.isnan(std) or math.isnan(mean):
        return math.nan, math.nan
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def format_estimate(
    mean: float,
    std: float,
    n: int,
    ci_low: float,
    ci_high: float,
    digits: int = 2,
    signed: bool = False,
    label_ci: bool = True,
    confidence: float = CONFIDENCE,
) -> str:
    """The text of an :class:`Estimate` from its numbers (see :meth:`Estimate.format`)."""
    if n is None or _missing(n) or int(n) == 0 or _missing(mean):
        return ""
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    if int(n) < 2 or _missing(std):
        return f"{text} (n={int(n)})"
    ci = f"[{ci_low:.{digits}f}, {ci_high:.{digits}f}]"
    ci = f", {100 * confidence:g}% CI {ci}" if label_ci else f" {ci}"
    return f"{text} ± {std:.{digits}f} (n={int(n)}){ci}"


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (e.g. t(0.975, 2) = 4.3027).

    Raises:
        ValueError: ``p`` is not in (0, 1) or ``df`` is not positive.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r} is not a probability in (0, 1)")
    if not df > 0:
        raise ValueError(f"df={df!r}: the degrees of freedom must be positive")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):  # bisection: the cdf is monotone, and 200 halvings reach double precision
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-14 * high:
            break
    return 0.5 * (low + high)


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom: ``1 - I_x(df/2, 1/2) / 2`` at ``x = df/(df+t^2)``
    for ``t > 0`` (symmetric below)."""
    if t == 0.0:
        return 0.5
    tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction on the side where it
    converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz)."""

    def nonzero(value: float) -> float:
        return value if abs(value) > _TINY else _TINY

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 / nonzero(1.0 + even * d)
        c = nonzero(1.0 + even / c)
        fraction *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 / nonzero(1.0 + odd * d)
        c = nonzero(1.0 + odd / c)
        step = d * c
        fraction *= step
        if abs(step - 1.0) < _EPS:
            break
    return fraction


def _missing(value: object) -> bool:
    """None, NaN or pandas' NA."""
    try:
        return value is None or bool(value != value)  # NaN and pd.NA are not equal to themselves
    except TypeError:  # pd.NA != pd.NA is NA, whose truth value raises
        return True
