"""The statistics of an A/B test, with the standard library only: intervals and a z-test.

- One proportion (a variant's click or conversion rate): the Wilson score interval
  (Wilson 1927), which stays inside [0, 1] and behaves with few events, unlike the
  textbook Wald interval.
- A difference of two proportions (a variant's uplift over the holdout, or over
  another variant): Newcombe's hybrid score interval (Newcombe 1998, method 10), built
  from the two Wilson intervals; statsmodels calls it ``method="newcomb"``.
- Its significance: the two-sided two-proportion z-test with the pooled proportion
  under the null hypothesis of no difference (statsmodels ``proportions_ztest``, and
  ``test_proportions_2indep(method="score", correction=False)`` at value 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

#: The confidence level of every interval unless the caller says otherwise.
CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(count: int, nobs: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Return the Wilson score interval of ``count`` successes in ``nobs`` (NaN if nobs is 0)."""
    if nobs <= 0:
        return (math.nan, math.nan)
    z = _z(confidence)
    p = count / nobs
    denom = 1 + z * z / nobs
    centre = (p + z * z / (2 * nobs)) / denom
    half = z * math.sqrt(p * (1 - p) / nobs + z * z / (4 * nobs * nobs)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_interval(
    count1: int, nobs1: int, count2: int, nobs2: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Return Newcombe's hybrid score interval of p1 - p2 (NaN if either group is empty)."""
    if nobs1 <= 0 or nobs2 <= 0:
        return (math.nan, math.nan)
    p1, p2 = count1 / nobs1, count2 / nobs2
    l1, u1 = wilson_interval(count1, nobs1, confidence)
    l2, u2 = wilson_interval(count2, nobs2, confidence)
    d = p1 - p2
    return (
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def two_proportion_z_test(count1: int, nobs1: int, count2: int, nobs2: int) -> tuple[float, float]:
    """Return (z, two-sided p-value) of the pooled two-proportion z-test of p1 = p2.

    NaN when a group is empty or both rates are 0 or 1 (no variance: nothing to test).
    """
    if nobs1 <= 0 or nobs2 <= 0:
        return (math.nan, math.nan)
    pooled = (count1 + count2) / (nobs1 + nobs2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / nobs1 + 1 / nobs2))
    if se == 0:
        return (math.nan, math.nan)
    z = (count1 / nobs1 - count2 / nobs2) / se
    return (z, 2 * (1 - NormalDist().cdf(abs(z))))


@dataclass(frozen=True)
class Comparison:
    """One group against another: the difference of rates, its interval and the test."""

    difference: float
    low: float
    high: float
    z: float
    p_value: float


def compare(
    count1: int, nobs1: int, count2: int, nobs2: int, confidence: float = CONFIDENCE
) -> Comparison:
    """Return p1 - p2 with Newcombe's interval and the pooled z-test's p-value."""
    diff = count1 / nobs1 - count2 / nobs2 if nobs1 > 0 and nobs2 > 0 else math.nan
    low, high = newcombe_interval(count1, nobs1, count2, nobs2, confidence)
    z, p = two_proportion_z_test(count1, nobs1, count2, nobs2)
    return Comparison(diff, low, high, z, p)
