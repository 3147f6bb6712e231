"""Statistics of repeated runs: the mean, sample standard deviation, count and Student-t confidence interval of a
set of values (:func:`estimate`), and of paired differences over the same seeds (:func:`paired_difference`); and,
over a runs table, which runs are independent replicates (:func:`replicate_units`) and the statistics of each
configuration's replicates (:func:`summarize`).

Every aggregated number of the report comes with its spread, in one column convention: a metric ``X`` (the mean over
the independent replicates of a configuration) is followed by ``X_std`` (sample standard deviation), ``X_n`` (how
many replicates) and ``X_ci_low`` / ``X_ci_high`` (the 95% Student-t confidence interval of the mean; empty below
two replicates). :func:`cimexp.report.markdown.to_markdown` shows the five as one cell, ``mean ± std (n=k) [low,
high]``, or ``mean (n=1)``, so no table presents one seed as if it were a result.

The Student-t quantile comes from the regularized incomplete beta function (a continued fraction, as in Numerical
Recipes' ``betacf``) and bisection, in plain Python (no SciPy); it is exact to about 1e-12 for any degrees of
freedom, so the 95% interval of 3 seeds uses t(0.975, 2) = 4.303, not the normal 1.96.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

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


ESTIMATE_SUFFIXES = ("_std", "_n", "_ci_low", "_ci_high")
"""Columns that follow a metric's mean (see the module docstring)."""


def estimate_columns(name: str) -> list[str]:
    """The mean column ``name`` and its :data:`ESTIMATE_SUFFIXES` companions."""
    return [name, *(f"{name}{suffix}" for suffix in ESTIMATE_SUFFIXES)]


def replicate_units(runs: pd.DataFrame, pairing: bool = False) -> pd.Series:
    """The measurement each run is, as a label on the index of ``runs``; runs with the same label in one
    configuration are repeats of one measurement and are averaged before any statistic.

    - Training runs: their seed.
    - Evaluation runs: the training seed and the chip instance (variation seed). An evaluation without variation and
      without ADC noise (``sigma`` 0, ``noise_lsb`` 0) is deterministic: its variation seed changes nothing, so
      the training seed alone.
    - Evaluations with ADC noise: each run is its own measurement (its ADC noise seed is not in the runs table);
      with ``pairing``, labelled by training seed and chip instance (their noise draws averaged), so that schemes
      pair on them.
    - Runs without a seed: each its own measurement, paired with nothing.

    The chip instances of one training seed share the trained network, so they are not independent of each other:
    where the evaluations under cell variation (``sigma`` > 0) of one configuration span two or more training
    seeds, the independent replicate is the training seed, and :func:`summarize` and
    :func:`~cimexp.report.tables.paired_table` average its chip instances (and their repeats) before taking
    statistics over the training seeds. Where they span one training seed, the chip instances are the replicates
    (the spread is then chip-to-chip, of one network).
    """
    index = runs.index
    seed = _column(runs, "seed")
    train_seed = _column(runs, "train_seed") if "train_seed" in runs else seed
    evaluation = (_column(runs, "kind") == "evaluate").fillna(False).astype(bool)
    sigma = pd.to_numeric(_column(runs, "sigma"), errors="coerce").fillna(0.0)
    noise = pd.to_numeric(_column(runs, "noise_lsb"), errors="coerce").fillna(0.0)
    deterministic = evaluation & (sigma == 0) & (noise == 0)
    noisy = evaluation & (noise > 0) & (not pairing)
    chip = seed.astype(object).where(~deterministic, "-")
    labels = train_seed.astype(str) + "/" + chip.astype(str)
    own = noisy | train_seed.isna() | (chip.isna() & ~deterministic)
    positions = pd.Series([f"run {i}" for i in range(len(runs))], index=index)
    return labels.where(~own, positions)


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` of ``runs``, or NAs where the runs table has no such column."""
    return runs[name] if name in runs else pd.Series(pd.NA, index=runs.index, dtype=object)


def chip_seeds(runs: pd.DataFrame) -> pd.Series:
    """The training seed (as text) in which each run's chip instance is nested: that of evaluation runs under cell
    variation (``sigma`` > 0); NA for every other run (see :func:`replicate_units`)."""
    evaluation = (_column(runs, "kind") == "evaluate").fillna(False).astype(bool)
    sigma = pd.to_numeric(_column(runs, "sigma"), errors="coerce").fillna(0.0)
    train_seed = _column(runs, "train_seed")
    return train_seed.astype(str).where(evaluation & (sigma > 0) & train_seed.notna())


def over_training_seeds(measurements: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """``measurements`` (one row per :func:`replicate_units` label ``_unit`` of each ``keys`` group, with its
    :func:`chip_seeds` ``_seed``) averaged to one row per independent replicate: in a group whose chip instances
    span two or more training seeds, those of one training seed become one replicate; other rows stay as they are.
    Columns: ``keys``, ``_replicate``, ``values``."""
    nested = measurements["_seed"].notna()
    seeds = measurements["_seed"].groupby([measurements[k] for k in keys], dropna=False, sort=False)
    spans_seeds = seeds.transform("nunique") >= 2
    replicate = measurements["_unit"].where(~(nested & spans_seeds), "seed " + measurements["_seed"])
    grouped = measurements.assign(_replicate=replicate).groupby([*keys, "_replicate"], dropna=False, sort=False)
    return grouped[list(values)].mean().reset_index()


def summarize(frame: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Statistics of ``values`` over the independent replicates of each ``keys`` group: the group keys, then per
    value its mean and :data:`ESTIMATE_SUFFIXES` columns. Repeats of one measurement (:func:`replicate_units`) are
    averaged first; where a group's evaluations under cell variation span two or more training seeds, so are the
    chip instances of each training seed, and mean, std, n and interval are over the training seeds (n = number of
    training seeds); over one training seed, over its chip instances. Groups in order of first appearance; missing
    keys form groups of their own."""
    columns = [*keys, *(column for value in values for column in estimate_columns(value))]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    numbers = frame[list(values)].apply(pd.to_numeric, errors="coerce").astype(float)
    measurements = (
        frame[list(keys)]
        .assign(**{value: numbers[value] for value in values}, _unit=replicate_units(frame), _seed=chip_seeds(frame))
        .groupby([*keys, "_unit", "_seed"], dropna=False, sort=False)[list(values)]
        .mean()
        .reset_index()
    )
    replicates = over_training_seeds(measurements, keys, values)
    groups = replicates.groupby(list(keys), dropna=False, sort=False)[list(values)]
    aggregated = groups.agg(["mean", "std", "count"])
    table = aggregated.index.to_frame(index=False)
    table.columns = list(keys)
    for value in values:
        mean, std = aggregated[(value, "mean")].to_numpy(), aggregated[(value, "std")].to_numpy()
        n = aggregated[(value, "count")].to_numpy().astype(int)
        bounds = [confidence_interval(float(m), float(s), int(k)) for m, s, k in zip(mean, std, n, strict=True)]
        table[value] = mean
        table[f"{value}_std"] = std
        table[f"{value}_n"] = n
        table[f"{value}_ci_low"] = [low for low, _ in bounds]
        table[f"{value}_ci_high"] = [high for _, high in bounds]
    return table[columns]


def scheme_stats(frame: pd.DataFrame, keys: Sequence[str], value: str = "acc", x: str | None = None) -> pd.DataFrame:
    """:func:`summarize` of one ``value`` with short names: the group keys, ``mean``, ``std`` (empty for one
    replicate), ``n``, ``ci_low``, ``ci_high`` and, if ``x`` names a column, its mean as ``x``."""
    values = [value, *([x] if x is not None else [])]
    table = summarize(frame, keys, values)
    short = ["mean", "std", "n", "ci_low", "ci_high"]
    table = table.rename(columns=dict(zip(estimate_columns(value), short, strict=True)))
    if x is not None:
        table = table.drop(columns=estimate_columns(x)[1:]).rename(columns={x: "x"})
    return table


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
