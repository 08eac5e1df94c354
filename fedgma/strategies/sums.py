"""Running sums that replies are folded into one at a time (pure NumPy, no Flower import).

Every aggregate of the FedAvg family, of FedGMA and of GMA is made of sums over
the clients: sum_k n_k x_k for the weights, gradients and metrics, and
sum_k a_k sign(u_k) for the sign agreement (:mod:`.masking`). Folding each reply
into these sums as it arrives lets the server drop the reply at once, so its
memory does not grow with the clients per round.

Folding is floating-point summation, so the order of the clients decides the last
bits of the result; callers fold in a fixed order (:class:`~.guard.ReplyGuard`:
partition order). The weighted sums are kept in float64 and divided once at the end.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def mean_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype of a weighted mean of arrays of ``dtype``, as Flower's ``aggregate_arrayrecords`` gives it
    (array times a Python float): float arrays keep theirs, integer arrays (BatchNorm's counter) give float64."""
    return (np.zeros(1, dtype=dtype) * 1.0).dtype


class WeightedSums:
    """sum_k w_k x_k per array name (float64) and sum_k w_k; :meth:`mean` divides."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.total = 0.0
        self._scratch: dict[str, np.ndarray] = {}

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold in one client's arrays with its weight (one scratch buffer per array, no allocation)."""
        for name, array in arrays.items():
            if name not in self.sums:
                self.sums[name] = np.zeros(array.shape, dtype=np.float64)
                self._scratch[name] = np.empty(array.shape, dtype=np.float64)
                self.dtypes[name] = mean_dtype(array.dtype)
            self.sums[name] += np.multiply(array, weight, out=self._scratch[name])
        self.total += weight

    def mean(self) -> dict[str, np.ndarray]:
        """sum_k w_k x_k / sum_k w_k per array, in :func:`mean_dtype` of the arrays folded in."""
        if not self.total > 0:
            raise ValueError(f"a weighted mean needs a positive total weight, got {self.total}")
        return {name: (total / self.total).astype(self.dtypes[name]) for name, total in self.sums.items()}


class SignSums:
    """sum_k a_k sign(u_k) per array name, u_k = array - reference (or the array itself), and sum_k a_k.

    ``weighted=False`` counts one vote per client exactly in int32 (the papers); ``weighted=True`` weighs each
    client's signs by the weight passed to :meth:`add` (declearn's option), in float64. Signs are found by
    two comparisons, without forming u_k.
    """

    def __init__(self, weighted: bool = False) -> None:
        self.weighted = weighted
        self.counts: dict[str, np.ndarray] = {}
        self.total = 0.0
        self._positive: dict[str, np.ndarray] = {}
        self._negative: dict[str, np.ndarray] = {}

    def add(self, arrays: Mapping[str, np.ndarray], weight: float = 1.0,
            reference: Mapping[str, np.ndarray] | None = None) -> None:
        for name, array in arrays.items():
            if name not in self.counts:
                self.counts[name] = np.zeros(array.shape, dtype=np.float64 if self.weighted else np.int32)
                self._positive[name] = np.empty(array.shape, dtype=bool)
                self._negative[name] = np.empty(array.shape, dtype=bool)
            pivot = 0 if reference is None else reference[name]
            positive, negative = self._positive[name], self._negative[name]
            np.greater(array, pivot, out=positive)
            np.less(array, pivot, out=negative)
            if self.weighted:
                self.counts[name] += weight * (positive.astype(np.float64) - negative)
            else:
                self.counts[name] += positive
                self.counts[name] -= negative
        self.total += weight if self.weighted else 1.0

    def agreement(self) -> dict[str, np.ndarray]:
        """A_j = |sum_k a_k sign(u_kj)| / sum_k a_k in [0, 1] (float64) per array."""
        if not self.total > 0:
            raise ValueError(f"client weights must sum to a positive number, got {self.total}")
        return {name: np.abs(counts, dtype=np.float64) / self.total for name, counts in self.counts.items()}


class MetricSums:
    """The weighted average of client metrics as Flower's ``aggregate_metricrecords`` defines it: each metric
    (a number or a list of numbers) weighted by the client's weight, the weight's own metric left out."""

    def __init__(self, weight_name: str) -> None:
        self.weight_name = weight_name
        self.sums: dict[str, float | list[float]] = {}
        self.total = 0.0

    def add(self, metrics: Mapping[str, float | list[float]], weight: float) -> None:
        for name, value in metrics.items():
            if name == self.weight_name:
                continue
            if isinstance(value, list):
                current = self.sums.get(name, [0.0] * len(value))
                self.sums[name] = [c + v * weight for c, v in zip(current, value, strict=True)]
            else:
                self.sums[name] = self.sums.get(name, 0.0) + value * weight
        self.total += weight

    def mean(self) -> dict[str, float | list[float]]:
        return {name: [v / self.total for v in value] if isinstance(value, list) else value / self.total
                for name, value in self.sums.items()}
