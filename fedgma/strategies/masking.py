"""Gradient-masking math as pure NumPy functions (no Flower import).

Notation follows ../shared/DESIGN.md: clients k = 1..K, weights n_k, per-client
arrays u_k (updates w_k - w_t, or last local gradients g_k), sign(0) = 0.

* sign agreement  A_j = |sum_k a_k sign(u_kj)| / sum_k a_k   with a_k = 1 (the
  papers) or a_k = n_k (weighted, Inria declearn's option); A_j lies in [0, 1];
* hard (AND-)mask  m_j = 1 if A_j >= tau else 0   (Parascandolo et al.; FedGMA's p);
* soft mask        m_j = 1 if A_j >= tau else A_j (the TMLR journal version of GMA).

A tie (A_j exactly equal to the threshold) keeps the coordinate. Agreement is
accumulated in float64 from exact sign sums, so e.g. 7 of 10 signs agreeing with
3 disagreeing gives exactly 0.4 and compares as expected against tau = 0.4.

Every function works on one array per client (one layer); callers loop over
layers. Only sums of (weighted) signs and of (weighted) arrays are needed, so the
scheme is compatible with secure aggregation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .sums import SignSums


def sign_agreement(arrays: Iterable[np.ndarray], weights: Sequence[float] | None = None,
                   reference: np.ndarray | None = None) -> np.ndarray:
    """Per-coordinate sign agreement A in [0, 1] (float64) of ``arrays`` minus ``reference``.

    Without ``reference`` the signs are those of the arrays themselves (e.g. last
    gradients g_k); with it, of u_k = array - reference (e.g. updates w_k - w_t),
    computed by comparison, without forming the difference. ``weights=None`` is
    the unweighted form of the papers: signs are counted exactly in int32;
    otherwise client k's sign counts with weight ``weights[k]``.
    """
    sums = SignSums(weighted=weights is not None)
    pivot = None if reference is None else {"": reference}
    for k, array in enumerate(arrays):
        sums.add({"": array}, 1.0 if weights is None else float(weights[k]), pivot)
    if not sums.counts:
        raise ValueError("sign_agreement needs at least one client array")
    return sums.agreement()[""]


def hard_mask(agreement: np.ndarray, threshold: float) -> np.ndarray:
    """AND-mask: 1 where the agreement reaches the threshold, 0 elsewhere (float32)."""
    return (agreement >= threshold).astype(np.float32)


def soft_mask(agreement: np.ndarray, threshold: float) -> np.ndarray:
    """Soft mask: 1 where the agreement reaches the threshold, else the agreement itself."""
    return np.where(agreement >= threshold, 1.0, agreement).astype(np.float32)


def build_mask(agreement: np.ndarray, threshold: float, kind: str) -> np.ndarray:
    """The ``'hard'`` or ``'soft'`` mask of an agreement array."""
    if kind == "hard":
        return hard_mask(agreement, threshold)
    if kind == "soft":
        return soft_mask(agreement, threshold)
    raise ValueError(f"mask kind must be 'hard' or 'soft', got {kind!r}")


def weighted_mean(arrays: Iterable[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_k n_k u_k / sum_k n_k in the arrays' own dtype.

    Same operations in the same order as Flower's ``aggregate_arrayrecords``
    (scale each array by n_k / sum n, add in turn), so a FedGMA round with the
    mask off reproduces Flower's FedAvg bit for bit; one scratch buffer is reused
    instead of allocating a product per client.
    """
    weight_sum = float(sum(weights))
    if weight_sum <= 0:
        raise ValueError(f"client weights must sum to a positive number, got {weight_sum}")
    total = scratch = None
    for array, weight in zip(arrays, weights, strict=True):
        if total is None:
            total = array * (weight / weight_sum)
            scratch = np.empty_like(total)
        else:
            total += np.multiply(array, weight / weight_sum, out=scratch)
    if total is None:
        raise ValueError("weighted_mean needs at least one client array")
    return total


def apply_mask_to_update(reference: np.ndarray, client: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """w_t + m * (w_k - w_t): a client's weights with its update masked.

    Coordinates with m = 1 return w_k bit for bit, so a mask of all ones leaves
    every client (and hence any averaging strategy on top) exactly unchanged.
    """
    out = client - reference
    out *= mask
    out += reference
    np.copyto(out, client, where=mask == 1)
    return out


class MaskedLayer(NamedTuple):
    """One layer of a masked aggregation."""

    weights: np.ndarray  # the layer's new value
    average: np.ndarray  # plain weighted averaging's value (FedAvg's w_bar), for comparison
    mask: np.ndarray
    agreement: np.ndarray


class FedGMADirection(NamedTuple):
    """What FedGMA's step is made of, for one layer."""

    mean_weights: np.ndarray  # w_bar, FedAvg's average
    direction: np.ndarray  # the weighted mean direction d_bar the server steps against
    agreement: np.ndarray  # the sign agreement of the clients' directions


def fedgma_direction(reference: np.ndarray, client_weights: Sequence[np.ndarray], example_weights: Sequence[float],
                     gradients: Sequence[np.ndarray] | None = None, sign_weights: Sequence[float] | None = None,
                     mean_weights: np.ndarray | None = None) -> FedGMADirection:
    """w_bar, d_bar and the agreement of one layer: d_bar is the weighted mean of the clients' last gradients
    g_k when given (the paper), else the pseudo-gradient w_t - w_bar (its signs are those of w_t - w_k,
    computed without forming the differences). ``mean_weights``: w_bar when the caller has it already (the
    wrapped strategy's aggregate)."""
    if mean_weights is None:
        mean_weights = weighted_mean(client_weights, example_weights)
    if gradients is not None:
        return direction_of_means(reference, mean_weights, weighted_mean(gradients, example_weights),
                                  sign_agreement(gradients, sign_weights))
    return direction_of_means(reference, mean_weights, None,
                              sign_agreement(client_weights, sign_weights, reference=reference))


def direction_of_means(reference: np.ndarray, mean_weights: np.ndarray, mean_gradient: np.ndarray | None,
                       agreement: np.ndarray) -> FedGMADirection:
    """FedGMA's parts from means alone (what secure aggregation hands the server): d_bar is the mean gradient
    when given, else the pseudo-gradient w_t - w_bar."""
    return FedGMADirection(mean_weights, reference - mean_weights if mean_gradient is None else mean_gradient,
                           agreement)


def fedgma_step(part: FedGMADirection, step_mask: np.ndarray, server_lr: float) -> np.ndarray:
    """w_{t+1} = w_bar - server_lr * m * d_bar."""
    return part.mean_weights - server_lr * (step_mask * part.direction)


def fedgma_layer(reference: np.ndarray, client_weights: Sequence[np.ndarray], example_weights: Sequence[float],
                 threshold: float, server_lr: float, gradients: Sequence[np.ndarray] | None = None,
                 sign_weights: Sequence[float] | None = None) -> MaskedLayer:
    """One layer of FedGMA (workshop version): :func:`fedgma_step` with m the hard mask of the
    direction's sign agreement at ``threshold`` (see :func:`fedgma_direction`)."""
    return fedgma_masked(fedgma_direction(reference, client_weights, example_weights, gradients, sign_weights),
                         threshold, server_lr)


def fedgma_masked(part: FedGMADirection, threshold: float, server_lr: float) -> MaskedLayer:
    """FedGMA's layer from its parts alone (w_bar, d_bar, A): all it needs are means and sign sums, which is
    what secure aggregation hands the server (:mod:`fedgma.strategies.secagg`)."""
    mask = hard_mask(part.agreement, threshold)
    return MaskedLayer(fedgma_step(part, mask, server_lr), part.mean_weights, mask, part.agreement)


def gma_layer(reference: np.ndarray, client_weights: Sequence[np.ndarray], example_weights: Sequence[float],
              threshold: float, kind: str, sign_weights: Sequence[float] | None = None) -> MaskedLayer:
    """One layer of GMA (journal version): w_t + m * (w_bar - w_t), m the ``kind``
    mask of the sign agreement of the updates w_k - w_t at ``threshold``."""
    return gma_masked(reference, weighted_mean(client_weights, example_weights),
                      sign_agreement(client_weights, sign_weights, reference=reference), threshold, kind)


def gma_masked(reference: np.ndarray, mean_weights: np.ndarray, agreement: np.ndarray, threshold: float,
               kind: str) -> MaskedLayer:
    """GMA's layer from the mean weights w_bar and the agreement A alone (what secure aggregation hands the
    server): w_t + m * (w_bar - w_t). Masking each client's update and then averaging gives the same, because
    the mask is one array shared by all clients."""
    mask = build_mask(agreement, threshold, kind)
    return MaskedLayer(apply_mask_to_update(reference, mean_weights, mask), mean_weights, mask, agreement)


def mask_effect(references: Mapping[str, np.ndarray], layers: Mapping[str, MaskedLayer]) -> float:
    """||w_new - w_bar|| / ||w_bar - w_t|| over all layers: how far masking moves the
    round's result away from plain averaging, relative to the averaged update itself
    (0: masking changed nothing; 1: a change as large as the update)."""
    moved = sum(float(np.sum((layer.weights - layer.average) ** 2, dtype=np.float64)) for layer in layers.values())
    update = sum(float(np.sum((layer.average - references[name]) ** 2, dtype=np.float64))
                 for name, layer in layers.items())
    return float(np.sqrt(moved / update)) if update > 0 else 0.0


def mask_statistics(references: Mapping[str, np.ndarray], layers: Mapping[str, MaskedLayer]) -> dict[str, float]:
    """Round diagnostics: the fraction of coordinates fully kept (``mask-density``,
    overall and ``mask-density/<layer>``), the mean mask value (``mask-mean``,
    equal to the density for a hard mask), the mean sign agreement
    (``mean-agreement``) and :func:`mask_effect` (``mask-effect``); none when no layer
    was masked (a model without trainable arrays). ``references`` may hold more layers
    than ``layers`` (the model's statistics, which are not masked)."""
    if not layers:
        return {}
    masks = {name: layer.mask for name, layer in layers.items()}
    size = sum(m.size for m in masks.values())
    kept = {name: np.count_nonzero(m == 1) for name, m in masks.items()}
    stats = {
        "mask-density": float(sum(kept.values()) / size),
        "mask-mean": float(sum(float(m.sum(dtype=np.float64)) for m in masks.values()) / size),
        "mean-agreement": float(sum(float(layer.agreement.sum()) for layer in layers.values()) / size),
        "mask-effect": mask_effect(references, layers),
    }
    stats.update({f"mask-density/{name}": float(kept[name] / masks[name].size) for name in masks})
    return stats
