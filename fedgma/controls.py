"""Matched controls for FedGMA's step: the same step without sign agreement (run config ``fedgma-control``).

An experiment's instrument, not part of the algorithm: if a control does as well as
FedGMA, the gain comes from the larger step, not from where agreement puts it.

* ``uniform-step``: every coordinate steps by the round's overall mask density d
  (w_bar - eta_s d d_bar: the same mean step length, no selection);
* ``random-mask``: per layer, as many kept coordinates as the sign mask keeps, at
  places drawn from (seed, round).
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO

import numpy as np
from flwr.common.logger import log

from fedgma.strategies.fedgma import FedGMA

STEP_CONTROLS = ("none", "uniform-step", "random-mask")

#: Stream id of the random-mask control's generator, apart from every other use of the seed.
_CONTROL_STREAM = 2_000_001


def random_mask_like(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 mask (float32) with as many ones as ``mask`` has non-zeros, at positions drawn by ``rng``."""
    out = np.zeros(mask.size, dtype=np.float32)
    out[rng.choice(mask.size, size=int(np.count_nonzero(mask)), replace=False)] = 1.0
    return out.reshape(mask.shape)


def control_masks(masks: Mapping[str, np.ndarray], control: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The step masks of ``control`` for FedGMA's hard sign masks (one per layer); ``none``: the masks."""
    if control == "none":
        return dict(masks)
    if control == "uniform-step":
        density = sum(np.count_nonzero(m) for m in masks.values()) / sum(m.size for m in masks.values())
        return {name: np.full(m.shape, density, dtype=np.float32) for name, m in masks.items()}
    if control == "random-mask":
        return {name: random_mask_like(m, rng) for name, m in masks.items()}
    raise ValueError(f"FedGMA control must be one of {', '.join(map(repr, STEP_CONTROLS))}, got {control!r}")


class ControlledFedGMA(FedGMA):
    """FedGMA whose step uses a matched control instead of the sign mask (the mask statistics still report
    the sign mask)."""

    def __init__(self, *args, control: str, seed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if control not in STEP_CONTROLS:
            raise ValueError(f"FedGMA control must be one of {', '.join(map(repr, STEP_CONTROLS))}, got {control!r}")
        self.control, self.seed = control, seed

    def summary(self) -> None:
        super().summary()
        if self.control != "none":
            log(INFO, "\t├──> control: %s instead of the sign mask", self.control)

    def step_masks(self, server_round: int, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return control_masks(masks, self.control, np.random.default_rng([self.seed, server_round, _CONTROL_STREAM]))
