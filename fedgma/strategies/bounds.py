"""Bounds on what one client can do to a round: the weight its reply carries and the size of its update.

Screening (:mod:`.replies`) rejects replies that cannot be used; a finite reply
can still claim 10^12 examples (and so outweigh every other client in a weighted
mean) or move the model arbitrarily far. Deployments that do not trust every
client bound both; the papers' setups do not, so both bounds are off by default.

* ``max_examples``: a reply's ``num-examples`` above it is clipped to it.
* ``max_update_norm``: a reply whose update has an L2 norm (over all layers)
  above it is scaled down to that norm: the weights to w_t + c (w_k - w_t), and
  FedGMA's gradient record, measured from 0, to c g_k (Flower's fixed-clipping
  rule, as its differential-privacy wrappers apply it).

Each clipped reply is counted and named, and replaced by a copy that holds the
clipped values (the received message is not edited).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MetricRecord

from .protocol import GRADIENT, NUM_EXAMPLES, with_records
from .records import encode
from .replies import AcceptedReply


def update_norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None) -> float:
    """||arrays - reference|| over all layers (from 0 without a reference), in float64."""
    total = 0.0
    for name, array in arrays.items():
        difference = array if reference is None else array - reference[name]
        total += float(np.sum(np.square(difference, dtype=np.float64)))
    return math.sqrt(total)


def scale_towards(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None,
                  factor: float) -> dict[str, np.ndarray]:
    """reference + factor (arrays - reference), layer by layer, in each array's dtype."""
    if reference is None:
        return {name: (array * factor).astype(array.dtype) for name, array in arrays.items()}
    return {name: (reference[name] + factor * (array - reference[name])).astype(array.dtype)
            for name, array in arrays.items()}


@dataclass(frozen=True)
class ReplyBounds:
    """The two bounds (0 = off) and how to apply them to accepted replies."""

    max_examples: float = 0.0
    max_update_norm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_examples", "max_update_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ReplyBounds {name} must be a finite number >= 0 (0 = off), got {value}")

    def apply(self, replies: list[AcceptedReply], reference: dict[str, np.ndarray], label: Callable[[Message], str],
              weighted_by_key: str = NUM_EXAMPLES) -> tuple[list[AcceptedReply], list[str]]:
        """The replies with every one that exceeds a bound replaced by its clipped copy; one note per clip.
        ``weighted_by_key``: the metric that weighs a reply (the strategy's; Flower's default 'num-examples')."""
        bounded, notes = [], []
        for reply in replies:
            clipped, changes = [], {}
            if self.max_examples and reply.num_examples > self.max_examples:
                clipped.append(f"claimed {reply.num_examples:g} examples, counted as {self.max_examples:g} "
                               "(max-examples)")
                name, metrics = next(iter(reply.message.content.metric_records.items()))
                changes[name] = MetricRecord(dict(metrics) | {weighted_by_key: self.max_examples})
                reply = dataclasses.replace(reply, num_examples=self.max_examples)
            if self.max_update_norm:
                arrays = dict(reply.arrays)
                for key, layers in reply.arrays.items():
                    base = None if key == GRADIENT else reference
                    norm = update_norm(layers, base)
                    if norm > self.max_update_norm:
                        clipped.append(f"'{key}' update norm {norm:.4g} scaled to {self.max_update_norm:g} "
                                       "(max-update-norm)")
                        arrays[key] = scale_towards(layers, base, self.max_update_norm / norm)
                        changes[key] = encode(arrays[key])
                reply = dataclasses.replace(reply, arrays=arrays)
            if clipped:
                reply = dataclasses.replace(reply, message=with_records(reply.message, changes))
                notes.append(f"{label(reply.message)} clipped: " + "; ".join(clipped))
            bounded.append(reply)
        return bounded, notes
