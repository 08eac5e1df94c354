"""FedGMA: the workshop version of gradient-masked federated optimization.

Tenison, Francis, Rish, "Gradient-Masked Federated Optimization", ICLR 2021
DPML workshop (arXiv 2104.10322), Algorithm 1. Per round t:

1. clients train from w_t and return their weights w_k and last local gradient g_k;
2. w_bar = sum n_k w_k / sum n_k (FedAvg);
3. g_bar = sum n_k (m * g_k) / sum n_k with the hard (AND-)mask m of the signs
   of the g_k at threshold p;
4. w_{t+1} = w_bar - eta_s * g_bar, with its own server step size eta_s.

With ``direction="pseudo-gradient"`` the masked direction is w_t - w_k instead of
g_k, so clients need not upload a second model-sized array. ``control`` replaces
the sign mask in step 4 by a matched control of the same density
(:func:`~fedgma.strategies.masking.control_masks`), to tell "agreement picks the
right coordinates" from "some coordinates take a larger step".
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .arguments import check_choice, check_fraction
from .masking import (STEP_CONTROLS, MaskedLayer, control_masks, fedgma_direction, fedgma_step, hard_mask,
                      mask_statistics)
from .protocol import GRADIENT, SEND_GRADIENT, WEIGHTS
from .records import encode
from .wrapper import MaskingWrapper

#: Stream id of the random-mask control's generator, apart from every other use of the seed.
_CONTROL_STREAM = 2_000_001


class FedGMA(MaskingWrapper):
    """FedGMA (workshop version): FedAvg plus a masked server gradient step.

    Client sampling, configuration and federated evaluation are those of the
    wrapped FedAvg; only the train aggregation differs. Replies with an error are
    left out (as Flower's FedAvg does); for screening of malformed replies,
    counts and resumption wrap it in :class:`~fedgma.strategies.ReplyGuard`.

    Parameters
    ----------
    strategy : FedAvg
        Supplies client sampling, train/evaluate configuration and metric averaging.
    p : float (default: 0.7)
        Hard-mask threshold on the sign agreement (paper: 0.8; the seed
        repository found 0.7 best).
    server_lr : float (default: 1e-4)
        Server step size eta_s along the masked mean direction (seed repository: 1e-4).
    direction : str (default: "gradient")
        "gradient": mask the clients' last local gradients g_k (the paper);
        "pseudo-gradient": mask w_t - w_k (no gradient upload).
    weighted_agreement : bool (default: False)
        Weight each client's sign by its number of examples instead of counting
        clients equally (the paper).
    control : str (default: "none")
        "none" (FedGMA), or a matched control that steps without agreement:
        "uniform-step" (every coordinate, scaled by the round's mask density) or
        "random-mask" (a random mask with the sign mask's per-layer density,
        drawn from (seed, round)).
    seed : int (default: 0)
        Seeds the random-mask control.
    """

    def __init__(self, strategy: FedAvg, p: float = 0.7, server_lr: float = 1e-4, direction: str = "gradient",
                 weighted_agreement: bool = False, control: str = "none", seed: int = 0) -> None:
        if not isinstance(strategy, FedAvg):
            raise TypeError(f"FedGMA's step is defined over FedAvg's weighted mean; got {type(strategy).__name__}")
        if server_lr < 0:
            raise ValueError(f"FedGMA server_lr must be >= 0, got {server_lr}")
        super().__init__(strategy, weighted_agreement)
        self.p = check_fraction("FedGMA threshold p", p)
        self.server_lr = server_lr
        self.direction = check_choice("FedGMA direction", direction, ("gradient", "pseudo-gradient"))
        self.control = check_choice("FedGMA control", control, STEP_CONTROLS)
        self.seed = seed

    @property
    def expected_records(self) -> tuple[str, ...]:
        """The ArrayRecords of every train reply (read by ReplyGuard's screening)."""
        return (WEIGHTS, GRADIENT) if self.direction == "gradient" else (WEIGHTS,)

    def summary(self) -> None:
        log(INFO, "\t├──> FedGMA: hard mask p %s, server lr %s, masks the %s, %s agreement%s", self.p,
            self.server_lr, self.direction, "example-weighted" if self.weighted_agreement else "unweighted",
            "" if self.control == "none" else f"; control: {self.control} instead of the sign mask")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[SEND_GRADIENT] = self.direction == "gradient"
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, weights, sign_weights = self.read(replies)
        if not replies:
            return None, None
        parts = {}
        for name, reference in self._current.items():
            gradients = [r.arrays[GRADIENT][name] for r in replies] if self.direction == "gradient" else None
            parts[name] = fedgma_direction(reference, [r.arrays[WEIGHTS][name] for r in replies], weights,
                                           gradients, sign_weights)
        masks = {name: hard_mask(part.agreement, self.p) for name, part in parts.items()}
        rng = np.random.default_rng([self.seed, server_round, _CONTROL_STREAM])
        steps = control_masks(masks, self.control, rng)
        layers = {name: MaskedLayer(fedgma_step(part, steps[name], self.server_lr), part.mean_weights, masks[name],
                                    part.agreement) for name, part in parts.items()}
        metrics = self.strategy.train_metrics_aggr_fn([r.message.content for r in replies],
                                                      self.strategy.weighted_by_key)
        return (encode({name: layer.weights for name, layer in layers.items()}),
                MetricRecord(dict(metrics) | mask_statistics(self._current, layers)))
