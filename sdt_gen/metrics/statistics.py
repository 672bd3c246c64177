"""Statistics over training seeds: means, standard deviations and paired differences with intervals.

A study trains every variant once per seed; a seed fixes the data order, the noise and every shared
initial weight, so the runs of one seed form a pair, and the paired difference cancels what the
seed contributes. Intervals are Student-t intervals over seeds: with 3 seeds they are wide
(t = 4.30 at 95%), and a claim must stay inside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value) of a metric over seeds.

    Args:
        values: one value per seed.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"expected a non-empty list of values, got shape {values.shape}")
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return {"mean": float(values.mean()), "std": std, "n": len(values)}


def paired_difference(
    values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> dict[str, float]:
    """Mean of ``values[i] - baseline[i]`` over pairs, with its Student-t confidence interval.

    Returns ``mean``, ``low``, ``high`` (the interval; NaN with fewer than 2 pairs), ``n``,
    ``excludes_zero``: whether the interval lies entirely on one side of 0, i.e. whether the data
    support a difference at that confidence, and ``p``: the two-sided p-value of the paired t-test
    (NaN with fewer than 2 pairs; 0 or 1 when every difference is the same).

    Args:
        values: the metric of a variant, one value per seed.
        baseline: the metric of the baseline for the same seeds, in the same order.
        confidence: the interval's coverage, in (0, 1).
    """
    values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    if values.shape != baseline.shape or values.ndim != 1 or len(values) == 0:
        raise ValueError(
            f"paired values need two equally long, non-empty lists; got shapes {values.shape} and {baseline.shape}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = values - baseline
    mean, n = float(diff.mean()), len(diff)
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n, "excludes_zero": False, "p": math.nan}
    sem = diff.std(ddof=1) / math.sqrt(n)
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sem)
    low, high = mean - half, mean + half
    p = float(2 * scipy.stats.t.sf(abs(mean) / sem, df=n - 1)) if sem > 0 else float(mean == 0)
    return {"mean": mean, "low": low, "high": high, "n": n, "excludes_zero": bool(low > 0 or high < 0), "p": p}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for testing several hypotheses at once.

    The k-th smallest of ``m`` p-values is multiplied by ``m - k + 1`` (k from 1), made non-decreasing in that
    order and capped at 1; rejecting where the adjusted value is below ``alpha`` keeps the chance of any false
    rejection below ``alpha``. NaN p-values stay NaN and do not count as tests.

    Args:
        p_values: one p-value per test, in any order.

    Returns:
        the adjusted p-values, in the order given.
    """
    p = np.asarray(p_values, dtype=np.float64)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), math.nan)
    running = 0.0
    for rank, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
