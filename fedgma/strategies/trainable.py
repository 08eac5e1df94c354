"""Which arrays of a model the masks and server steps apply to: its trainable floating-point parameters.

A model's state holds more than its parameters: BatchNorm keeps running means and
variances (which must stay positive) and an integer counter, often 0-d. Those are
statistics, not parameters: masking them or extrapolating them with a server step
has no meaning (FedGMA's step can turn a variance negative), so they are
aggregated exactly as the wrapped strategy aggregates them.

The default rule (:func:`is_trainable`) needs no help from the client: an array is
trainable when it holds floating-point numbers, has at least one dimension and one
element, and its name is not a known statistics buffer of PyTorch, Keras or Flax
(see ``STATISTICS``; the name is split at ``.``, ``/`` and ``:``). Models whose
buffers have other names, and the legacy API, whose arrays have no names ("0",
"1", ...), pass ``trainable=`` to the strategy: the set of trainable array names,
or a function ``(name, array) -> bool``. With PyTorch, for example::

    trainable = {name for name, _ in model.named_parameters()}           # Message API
    trainable = {str(i) for i, key in enumerate(model.state_dict())      # legacy API
                 if key in dict(model.named_parameters())}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

import numpy as np

#: Names of non-trainable statistics: PyTorch BatchNorm buffers, Keras BatchNormalization's moving
#: statistics, and Flax's ``batch_stats`` collection (matched as any part of the name).
STATISTICS = frozenset({"running_mean", "running_var", "num_batches_tracked", "moving_mean", "moving_variance",
                        "batch_stats"})

TrainableRule = Callable[[str, np.ndarray], bool]
Trainable = TrainableRule | Collection[str] | None


def is_trainable(name: str, array: np.ndarray) -> bool:
    """The default rule: a floating-point array with a dimension and an element, not named as a statistic."""
    if not np.issubdtype(array.dtype, np.floating) or array.ndim == 0 or array.size == 0:
        return False
    return not STATISTICS.intersection(re.split(r"[./:]", name))


def trainable_rule(trainable: Trainable) -> TrainableRule:
    """The rule a strategy's ``trainable`` argument stands for (None: :func:`is_trainable`).

    A set of names still excludes non-floating, 0-d and empty arrays: a mask or a step on an integer
    counter cannot keep its dtype's meaning.
    """
    if trainable is None:
        return is_trainable
    if callable(trainable):
        return trainable
    if isinstance(trainable, str) or not all(isinstance(name, str) for name in trainable):
        raise TypeError("trainable must be a collection of array names (str) or a function (name, array) -> bool, "
                        f"got {trainable!r}")
    names = frozenset(trainable)
    return lambda name, array: (name in names and np.issubdtype(array.dtype, np.floating) and array.ndim > 0
                                and array.size > 0)


def trainable_names(arrays: dict[str, np.ndarray], rule: TrainableRule) -> list[str]:
    """The names of the arrays ``rule`` calls trainable, in the model's order."""
    return [name for name, array in arrays.items() if rule(name, array)]
