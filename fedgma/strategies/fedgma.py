"""FedGMA: the workshop version of gradient-masked federated optimization.

Tenison, Francis, Rish, "Gradient-Masked Federated Optimization", ICLR 2021
DPML workshop (arXiv 2104.10322), Algorithm 1. Per round t:

1. clients train from w_t and return their weights w_k and last local gradient g_k;
2. w_bar = sum n_k w_k / sum n_k (FedAvg);
3. g_bar = sum n_k (m * g_k) / sum n_k with the hard (AND-)mask m of the signs
   of the g_k at threshold p;
4. w_{t+1} = w_bar - eta_s * g_bar, with its own server step size eta_s.

With ``direction="pseudo-gradient"`` (the default) the masked direction is
w_t - w_k instead of g_k, so clients upload nothing but their weights and any
ClientApp serves it; step 4 is then w_bar + eta_s * m * (w_bar - w_t): coordinates
on which the clients agree move eta_s times further than FedAvg moves them.

w_bar is the wrapped strategy's own aggregate (FedAvg or FedProx: its record
keys, weights and metric aggregation), and the step applies to the trainable
arrays only (:mod:`.trainable`); statistics such as BatchNorm's running variances
keep FedAvg's value, which an extrapolating step could turn negative.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .arguments import check_choice, check_fraction, check_step
from .composition import check_fedgma_strategy
from .folding import MeanFold, mean_fold_of
from .masking import (FedGMADirection, MaskedLayer, direction_of_means, fedgma_direction, fedgma_step, hard_mask,
                      mask_statistics)
from .protocol import GRADIENT, SEND_GRADIENT
from .records import decode, encode
from .replies import AcceptedReply
from .sums import SignSums, WeightedSums
from .trainable import Trainable, trainable_names
from .wrapper import MaskingWrapper, with_counts


class FedGMA(MaskingWrapper):
    """FedGMA (workshop version): FedAvg plus a masked server gradient step.

    Client sampling, configuration, federated evaluation and the weighted mean
    w_bar are those of the wrapped FedAvg; FedGMA adds the masked step to the
    trainable arrays. Failed and malformed replies are skipped, counted and logged.

    Parameters
    ----------
    strategy : Strategy
        FedAvg or FedProx (or a subclass that keeps FedAvg's ``aggregate_train``):
        supplies sampling, configuration, w_bar and metric aggregation. Other
        server updates are refused (:mod:`.composition`).
    p : float (default: 0.8)
        Hard-mask threshold on the sign agreement (the paper's 0.8).
    server_lr : float (default: 0.5)
        Server step size eta_s along the masked mean direction. 0.5 is the
        value selected by training-domain validation on IRM's colored MNIST
        (docs/results/irm-tune); the seed repository's 1e-4, made for the
        gradient direction, leaves the pseudo-gradient step a no-op.
    direction : str (default: "pseudo-gradient")
        "pseudo-gradient": mask w_t - w_k (nothing but the weights uploaded);
        "gradient": mask the clients' last local gradients g_k (the paper), which
        clients send in an ArrayRecord 'gradient' when the train config has
        'send-gradient' true.
    weighted_agreement : bool (default: False)
        Weight each client's sign by its weight instead of counting clients
        equally (the paper).
    trainable : collection of names or function (default: the name rule)
        Which arrays take the step (:mod:`.trainable`).
    aggregation : str (default: None)
        "weighted-mean" declares that a strategy with its own ``aggregate_train``
        returns FedAvg's weighted mean.
    """

    def __init__(self, strategy: Strategy, p: float = 0.8, server_lr: float = 0.5,
                 direction: str = "pseudo-gradient", weighted_agreement: bool = False, trainable: Trainable = None,
                 aggregation: str | None = None) -> None:
        check_fedgma_strategy(strategy, aggregation)
        super().__init__(strategy, weighted_agreement, trainable)
        self.p = check_fraction("FedGMA threshold p", p)
        self.server_lr = check_step("FedGMA server_lr", server_lr)
        self.direction = check_choice("FedGMA direction", direction, ("gradient", "pseudo-gradient"))
        self.expects_gradient = direction == "gradient"

    def summary(self) -> None:
        log(INFO, "\t├──> FedGMA: hard mask p %s, server lr %s, masks the %s, %s agreement", self.p,
            self.server_lr, self.direction, "example-weighted" if self.weighted_agreement else "unweighted")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.expects_gradient:  # a copy: the caller's config is not edited
            config = ConfigRecord(dict(config) | {SEND_GRADIENT: True})
        return super().configure_train(server_round, arrays, config, grid)

    def step_masks(self, server_round: int, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The masks the step uses: the sign masks themselves (an experiment's control replaces them)."""
        return masks

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        screened, names = self.screen(server_round, replies)
        accepted = screened.accepted
        mean, metrics = (self.strategy.aggregate_train(server_round, [self.weights_only(r) for r in accepted])
                         if accepted else (None, None))
        if mean is None:
            return None, with_counts(metrics, screened)
        mean_arrays, weights = decode(mean), [r.num_examples for r in accepted]
        parts = {name: fedgma_direction(self._current[name], [r.weights[name] for r in accepted], weights,
                                        [r.arrays[GRADIENT][name] for r in accepted] if self.expects_gradient else None,
                                        self.sign_weights(accepted), mean_weights=mean_arrays[name])
                 for name in names}
        arrays, metrics = self.step(server_round, mean_arrays, metrics, parts)
        return arrays, with_counts(metrics, screened)

    def step(self, server_round: int, mean_arrays: dict[str, np.ndarray], metrics: MetricRecord | None,
             parts: dict[str, FedGMADirection]) -> tuple[ArrayRecord, MetricRecord]:
        """w_bar with the masked step taken on each layer of ``parts``, and the round's metrics with the mask's."""
        masks = {name: hard_mask(part.agreement, self.p) for name, part in parts.items()}
        steps = self.step_masks(server_round, masks)
        layers = {name: MaskedLayer(fedgma_step(part, steps[name], self.server_lr).astype(mean_arrays[name].dtype),
                                    part.mean_weights, masks[name], part.agreement) for name, part in parts.items()}
        return (encode(mean_arrays | {name: layer.weights for name, layer in layers.items()}),
                MetricRecord(dict(metrics or {}) | mask_statistics(self._current, layers)))

    def fold(self) -> FedGMAFold | None:
        """This round's aggregation from running sums (:mod:`.folding`) when the wrapped strategy's w_bar can be
        folded (Flower's FedAvg or FedProx with its own metric aggregation)."""
        base = mean_fold_of(self.strategy)
        return None if base is None else FedGMAFold(self, base)


class FedGMAFold:
    """FedGMA from running sums: w_bar (the wrapped FedAvg's :class:`~.folding.MeanFold`), the sign sums of the
    masked direction (g_k, or w_k - w_t) and, for the gradient direction, the weighted sum of the g_k."""

    def __init__(self, fedgma: FedGMA, base: MeanFold) -> None:
        self.fedgma, self.base = fedgma, base
        self.names = trainable_names(fedgma._current, fedgma.trainable)
        self.signs = SignSums(weighted=fedgma.weighted_agreement)
        self.gradients = WeightedSums() if fedgma.expects_gradient else None

    def add(self, reply: AcceptedReply) -> None:
        self.base.add(reply)
        if self.gradients is None:
            self.signs.add({name: reply.weights[name] for name in self.names}, reply.num_examples,
                           reference=self.fedgma._current)
            return
        gradient = {name: reply.arrays[GRADIENT][name] for name in self.names}
        self.gradients.add(gradient, reply.num_examples)
        self.signs.add(gradient, reply.num_examples)

    def result(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        mean, metrics = self.base.result(server_round)
        if mean is None:
            return None, metrics
        mean_arrays, agreement = decode(mean), self.signs.agreement()
        gradient = self.gradients.mean() if self.gradients is not None else None
        parts = {name: direction_of_means(self.fedgma._current[name], mean_arrays[name],
                                          None if gradient is None else gradient[name], agreement[name])
                 for name in self.names}
        return self.fedgma.step(server_round, mean_arrays, metrics, parts)
