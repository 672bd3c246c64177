"""Means, standard deviations and paired intervals over seeds, checked against scipy."""

import math

import numpy as np
import pytest
import scipy.stats

from sdt_gen.metrics import mean_std, paired_difference


def test_mean_std_is_the_sample_standard_deviation():
    values = [3.0, 5.0, 10.0]
    out = mean_std(values)
    assert out["mean"] == pytest.approx(6.0) and out["n"] == 3
    assert out["std"] == pytest.approx(np.std(values, ddof=1))
    assert math.isnan(mean_std([2.0])["std"])


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_paired_interval_equals_scipys_paired_t_interval(confidence):
    rng = np.random.default_rng(0)
    baseline = rng.normal(10, 2, size=5)
    values = baseline + rng.normal(-1, 0.5, size=5)
    out = paired_difference(values, baseline, confidence)
    reference = scipy.stats.ttest_rel(values, baseline).confidence_interval(confidence)
    assert out["mean"] == pytest.approx(np.mean(values - baseline))
    assert (out["low"], out["high"]) == pytest.approx((reference.low, reference.high))
    assert out["excludes_zero"] == (reference.high < 0 or reference.low > 0)


def test_an_interval_around_zero_supports_no_difference():
    out = paired_difference([1.0, 2.0, 3.0], [1.5, 1.5, 3.1])
    assert out["low"] < 0 < out["high"] and not out["excludes_zero"]
    assert paired_difference([1.0], [0.0])["excludes_zero"] is False  # one pair: no interval at all


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="two equally long"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_difference([1.0, 2.0], [1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="non-empty"):
        mean_std([])
