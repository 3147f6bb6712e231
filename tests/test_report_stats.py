"""cimexp.report.stats against values computed by hand: closed forms of Student's t for 1, 2 and 4 degrees of
freedom, printed t tables, and means, intervals and paired differences worked out on paper."""

from __future__ import annotations

import math

import pytest

from cimexp.report.stats import (
    CONFIDENCE,
    Estimate,
    confidence_interval,
    estimate,
    format_estimate,
    paired_difference,
    student_t_cdf,
    t_quantile,
)


def _t1(p: float) -> float:
    """t quantile, 1 degree of freedom (Cauchy)."""
    return math.tan(math.pi * (p - 0.5))


def _t2(p: float) -> float:
    """t quantile, 2 degrees of freedom."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def _t4(p: float) -> float:
    """t quantile, 4 degrees of freedom (Shaw 2006)."""
    q = 4 * p * (1 - p)
    return math.copysign(2 * math.sqrt(math.cos(math.acos(math.sqrt(q)) / 3) / math.sqrt(q) - 1), p - 0.5)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.3, 0.025])
def test_t_quantile_matches_the_closed_forms(p: float) -> None:
    assert t_quantile(p, 1) == pytest.approx(_t1(p), rel=1e-10)
    assert t_quantile(p, 2) == pytest.approx(_t2(p), rel=1e-10)
    assert t_quantile(p, 4) == pytest.approx(_t4(p), rel=1e-10)


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [  # printed two-sided 95% / 99% critical values
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 3, 3.1824),
        (0.975, 9, 2.2622),
        (0.975, 29, 2.0452),
        (0.995, 5, 4.0321),
        (0.975, 1e7, 1.9600),  # the normal limit
    ],
)
def test_t_quantile_matches_printed_tables(p: float, df: float, table: float) -> None:
    assert t_quantile(p, df) == pytest.approx(table, abs=5e-5)


def test_t_distribution_is_symmetric_and_the_cdf_inverts_the_quantile() -> None:
    assert t_quantile(0.5, 3) == 0.0 and student_t_cdf(0.0, 3) == 0.5
    assert t_quantile(0.1, 7) == pytest.approx(-t_quantile(0.9, 7))
    for t in (-3.0, -0.5, 0.7, 2.0, 40.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12)
        assert t_quantile(student_t_cdf(t, 6), 6) == pytest.approx(t, rel=1e-9)


def test_t_quantile_names_bad_arguments() -> None:
    with pytest.raises(ValueError, match="p=1.0 is not a probability"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df=0"):
        t_quantile(0.9, 0)


def test_estimate_of_three_seeds() -> None:
    # 80, 82, 84: mean 82, std sqrt(((-2)^2 + 0 + 2^2) / 2) = 2, half-width t(0.975, 2) * 2 / sqrt(3) = 4.9683
    result = estimate([80.0, 82.0, 84.0])
    assert (result.mean, result.std, result.n) == (82.0, pytest.approx(2.0), 3)
    assert (result.ci_low, result.ci_high) == pytest.approx((82.0 - 4.968275, 82.0 + 4.968275), abs=1e-6)
    assert result.confidence == CONFIDENCE == 0.95
    assert result.format() == "82.00 ± 2.00 (n=3), 95% CI [77.03, 86.97]"
    assert result.format(digits=1, label_ci=False) == "82.0 ± 2.0 (n=3) [77.0, 87.0]"
    # two seeds: t(0.975, 1) = 12.706 makes the interval wide, as it should be
    assert estimate([80.0, 82.0]).ci_low == pytest.approx(81.0 - 12.7062047 * math.sqrt(2) / math.sqrt(2))


def test_one_or_no_value_is_never_given_a_spread() -> None:
    one = estimate([81.39, math.nan])  # NaNs are left out
    assert (one.mean, one.n) == (81.39, 1) and math.isnan(one.std) and math.isnan(one.ci_low)
    assert one.format() == "81.39 (n=1)"
    none = estimate([])
    assert none.n == 0 and math.isnan(none.mean) and none.format() == ""
    assert all(math.isnan(bound) for bound in confidence_interval(81.0, math.nan, 1))


def test_paired_difference_over_the_seeds_both_have() -> None:
    # seeds 0, 1, 2: differences 1, 1.5, 2 (seed 3 has no partner): mean 1.5, std 0.5,
    # half-width t(0.975, 2) * 0.5 / sqrt(3) = 1.24207
    a = {0: 81.0, 1: 82.0, 2: 84.0}
    b = {0: 80.0, 1: 80.5, 2: 82.0, 3: 70.0}
    result = paired_difference(a, b)
    assert (result.mean, result.std, result.n) == (1.5, pytest.approx(0.5), 3)
    assert (result.ci_low, result.ci_high) == pytest.approx((1.5 - 1.242069, 1.5 + 1.242069), abs=1e-6)
    assert result.format(signed=True) == "+1.50 ± 0.50 (n=3), 95% CI [0.26, 2.74]"
    assert paired_difference(b, a).format(signed=True) == "-1.50 ± 0.50 (n=3), 95% CI [-2.74, -0.26]"


def test_pairing_removes_what_a_seed_does_to_both() -> None:
    """A seed effect shared by both schemes widens their separate intervals, not the paired one."""
    seed_effect = {0: -3.0, 1: 0.0, 2: 3.0}
    a = {seed: 80.0 + effect + 1.0 for seed, effect in seed_effect.items()}
    b = {seed: 80.0 + effect for seed, effect in seed_effect.items()}
    assert estimate(a.values()).std == pytest.approx(3.0)
    paired = paired_difference(a, b)
    assert paired.mean == pytest.approx(1.0) and paired.std == pytest.approx(0.0, abs=1e-12)


def test_format_estimate_from_table_numbers() -> None:
    assert format_estimate(2.0, 1.0, 3, -0.48, 4.48, signed=True, label_ci=False) == "+2.00 ± 1.00 (n=3) [-0.48, 4.48]"
    assert format_estimate(85.0, math.nan, 1, math.nan, math.nan) == "85.00 (n=1)"
    assert format_estimate(math.nan, math.nan, 0, math.nan, math.nan) == ""
    assert Estimate(1.0, math.nan, 1, math.nan, math.nan).format(signed=True) == "+1.00 (n=1)"
