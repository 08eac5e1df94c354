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

Each clipped reply is counted and named. The message content is rewritten in
place before the wrapped strategy reads it, as Flower's own wrappers do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from ..records import encode
from .replies import NUM_EXAMPLES, WEIGHTS, AcceptedReply


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

    def apply(self, replies: list[AcceptedReply], reference: dict[str, np.ndarray],
              label: Callable[[Message], str]) -> list[str]:
        """Clip every reply that exceeds a bound, in place; one note per clipped reply."""
        notes = []
        for reply in replies:
            clipped = []
            if self.max_examples and reply.num_examples > self.max_examples:
                clipped.append(f"claimed {reply.num_examples:g} examples, counted as {self.max_examples:g} "
                               "(max-examples)")
                reply.num_examples = self.max_examples
                next(iter(reply.message.content.metric_records.values()))[NUM_EXAMPLES] = self.max_examples
            if self.max_update_norm:
                clipped += self._clip_norm(reply, reference)
            if clipped:
                notes.append(f"{label(reply.message)} clipped: " + "; ".join(clipped))
        return notes

    def _clip_norm(self, reply: AcceptedReply, reference: dict[str, np.ndarray]) -> list[str]:
        clipped = []
        for key, arrays in reply.arrays.items():
            base = reference if key == WEIGHTS else None
            norm = update_norm(arrays, base)
            if norm > self.max_update_norm:
                clipped.append(f"'{key}' update norm {norm:.4g} scaled to {self.max_update_norm:g} (max-update-norm)")
                reply.arrays[key] = scale_towards(arrays, base, self.max_update_norm / norm)
                reply.message.content[key] = encode(reply.arrays[key])
        return clipped
