"""The paired statistics equal scipy's and statsmodels' on known inputs, and behave at the edges."""

import math

import numpy as np
import pytest
from scipy import stats

from fedgma.tools.experiments.statistics import holm, mean_interval, paired_comparison


def test_paired_comparison_matches_scipy_on_known_inputs():
    method = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95, 4: 0.92}
    baseline = {0: 0.90, 1: 0.90, 2: 0.91, 3: 0.92, 4: 0.90, 9: 0.5}  # seed 9 has no pair: left out
    result = paired_comparison(method, baseline)
    d = np.array([0.01, 0.03, -0.01, 0.03, 0.02])
    t = d.mean() / (d.std(ddof=1) / np.sqrt(5))
    assert result.n == 5 and result.mean == pytest.approx(d.mean())
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), 4))
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half))
    # the README's effect rule of old (n = 3, all one sign, mean > std) is a p of about 0.2 at best:
    loose = paired_comparison({0: 1.0, 1: 1.2, 2: 1.4}, {0: 0.9, 1: 1.0, 2: 1.1})
    assert loose.p_value > 0.05


def test_paired_comparison_edges():
    assert math.isnan(paired_comparison({0: 1.0}, {0: 0.5}).p_value)
    same = paired_comparison({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
    assert same.mean == 0.5 and same.p_value == 0.0 and same.low == same.high == 0.5
    assert paired_comparison({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p_value == 1.0


def test_holm_matches_the_procedure_and_keeps_nan_out_of_the_family():
    p = [0.01, 0.04, math.nan, 0.03, 0.2]
    adjusted = holm(p)
    # Holm by hand over the 4 real p-values: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1, running maximum
    assert adjusted[0] == pytest.approx(0.04) and adjusted[3] == pytest.approx(0.09)
    assert adjusted[1] == pytest.approx(0.09) and adjusted[4] == pytest.approx(0.2) and math.isnan(adjusted[2])


def test_mean_interval_matches_scipy():
    values = [0.1, 0.2, 0.15, 0.3]
    mean, low, high = mean_interval(values)
    expected = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(0.1875) and (low, high) == pytest.approx(expected)
