"""Paired comparisons over seeds and a multiple-testing correction, from well-kept libraries.

Runs with the same seed share the initial model, the partitions and the colours,
so a method is compared with its baseline seed by seed: the paired differences
get a two-sided paired t-test and a 95% confidence interval for their mean
(``scipy.stats.ttest_rel``), and the p-values of a family of headline claims are
Holm-corrected (``statsmodels.stats.multitest.multipletests``). An effect is
claimed only where the corrected p-value is below ``ALPHA``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

#: The significance level of every headline claim (after Holm's correction).
ALPHA = 0.05


@dataclass(frozen=True)
class PairedComparison:
    """Method minus baseline over the seeds both have."""

    n: int
    mean: float  # mean paired difference
    low: float  # 95% confidence interval of the mean difference
    high: float
    p_value: float  # two-sided paired t-test (NaN with fewer than two pairs)


def paired_comparison(method: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> PairedComparison:
    """Compare ``method`` with ``baseline`` on the seeds both have ({seed: value})."""
    seeds = sorted(set(method) & set(baseline))
    ours, theirs = [method[s] for s in seeds], [baseline[s] for s in seeds]
    differences = [a - b for a, b in zip(ours, theirs)]
    if len(seeds) < 2:
        mean = differences[0] if differences else math.nan
        return PairedComparison(len(seeds), mean, math.nan, math.nan, math.nan)
    if len(set(differences)) == 1:  # no spread: the t statistic is undefined, the interval is the point
        return PairedComparison(len(seeds), differences[0], differences[0], differences[0],
                                1.0 if differences[0] == 0 else 0.0)
    test = stats.ttest_rel(ours, theirs)
    interval = test.confidence_interval(confidence)
    return PairedComparison(len(seeds), sum(differences) / len(seeds), float(interval.low), float(interval.high),
                            float(test.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order); NaN entries stay NaN and are not counted in the family."""
    indexed = [(i, p) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    if indexed:
        corrected = multipletests([p for _, p in indexed], alpha=ALPHA, method="holm")[1]
        for (i, _), value in zip(indexed, corrected):
            adjusted[i] = float(value)
    return adjusted


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` with its t-based confidence interval."""
    mean, low, high = mean_intervals(np.asarray(values, dtype=float).reshape(-1, 1), confidence)
    return float(mean[0]), float(low[0]), float(high[0])


def mean_intervals(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``values`` (rows: seeds), the mean and its t-based confidence interval (NaN below 2 rows;
    the mean itself where the rows agree)."""
    n = values.shape[0]
    mean = values.mean(axis=0) if n else np.full(values.shape[1], math.nan)
    if n < 2:
        return mean, np.full_like(mean, math.nan), np.full_like(mean, math.nan)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * stats.sem(values, axis=0)
    return mean, mean - half, mean + half
