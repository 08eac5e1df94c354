"""GMA: the journal version's gradient mask on top of a Flower strategy.

Tenison, Sreeramadas, Mugunthan, Oyallon, Rish, Belilovsky, "Gradient Masked
Averaging for Federated Learning", TMLR 2023 (arXiv 2201.11986).

GMA replaces the averaging step of an FL algorithm: the mean update
Delta = sum n_k Delta_k / sum n_k is masked coordinate-wise by a mask m built from
the signs of the client updates Delta_k = w_k - w_t, and the algorithm's own
server update then uses m * Delta where it would use Delta (FedAvg: w_t + m * Delta;
FedAvgM/FedAdam/FedYogi/FedAdagrad: -m * Delta is the server optimizer's
pseudo-gradient; FedProx: as FedAvg, the proximal term stays on the clients).

Because m is shared by all clients, rewriting each reply's trainable arrays to
w_t + m * Delta_k before the wrapped strategy aggregates gives exactly that, so
one wrapper serves every averaging strategy without touching its code; it also
commutes with FedMedian and FedTrimmedAvg, and is refused over strategies for
which it would mean something else (:mod:`.composition`). The wrapped strategy
aggregates the rewritten replies itself: its record keys, weights, metric
aggregation callback and non-trainable arrays (BatchNorm statistics, counters)
are its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from .arguments import check_choice, check_fraction
from .composition import check_weighted_agreement, gma_aggregation
from .masking import MaskedLayer, apply_mask_to_update, gma_layer, mask_statistics
from .protocol import with_records
from .records import encode
from .replies import AcceptedReply
from .trainable import Trainable
from .wrapper import MaskingWrapper, with_counts


class GMA(MaskingWrapper):
    """Gradient-masked averaging (journal version) wrapped around a strategy.

    A wrapper in the shape of Flower's differential-privacy wrappers: sampling,
    configuration, evaluation and metric aggregation are the wrapped strategy's;
    the trainable arrays of the train replies are masked before it aggregates
    them. Failed and malformed replies are skipped, counted and logged.

    Parameters
    ----------
    strategy : Strategy
        The strategy whose aggregation is masked: FedAvg, FedProx, FedAvgM,
        FedAdam, FedYogi, FedAdagrad (exact GMA), FedMedian or FedTrimmedAvg
        (the mask commutes with them). Others are refused (:mod:`.composition`).
    tau : float (default: 0.4)
        Threshold on the sign agreement A_j in [0, 1]; coordinates with
        A_j >= tau are kept whole. 0.4 is the common default of public code.
    mask : str (default: "soft")
        "soft" scales the other coordinates by A_j (the journal version);
        "hard" zeroes them (AND-mask).
    weighted_agreement : bool (default: False)
        Weight each client's sign by its weight (``weighted_by_key``, declearn's
        option) instead of counting clients equally (the paper). Refused over
        FedMedian and FedTrimmedAvg: one client claiming many examples would
        choose the mask the robust aggregator is there to protect.
    trainable : collection of names or function (default: the name rule)
        Which arrays are masked (:mod:`.trainable`); the others reach the
        wrapped strategy as the clients sent them.
    aggregation : str (default: None, read from the strategy's class)
        "weighted-mean" or "coordinate-wise": declares how a strategy this
        library does not know aggregates.
    """

    def __init__(self, strategy: Strategy, tau: float = 0.4, mask: str = "soft", weighted_agreement: bool = False,
                 trainable: Trainable = None, aggregation: str | None = None) -> None:
        super().__init__(strategy, weighted_agreement, trainable)
        self.aggregation = gma_aggregation(strategy, aggregation)
        check_weighted_agreement("GMA", strategy, self.aggregation, weighted_agreement)
        self.tau = check_fraction("GMA threshold tau", tau)
        self.mask = check_choice("GMA mask", mask, ("soft", "hard"))

    def summary(self) -> None:
        log(INFO, "\t├──> GMA: %s mask, tau %s, %s agreement, over a %s", self.mask, self.tau,
            "example-weighted" if self.weighted_agreement else "unweighted", self.aggregation)
        self.strategy.summary()

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        screened, names = self.screen(server_round, replies)
        if not screened.accepted:
            return None, with_counts(None, screened)
        accepted, sign_weights = screened.accepted, self.sign_weights(screened.accepted)
        layers = {name: gma_layer(self._current[name], [r.weights[name] for r in accepted],
                                  [r.num_examples for r in accepted], self.tau, self.mask, sign_weights)
                  for name in names}
        arrays, metrics = self.strategy.aggregate_train(server_round, [self._masked(r, layers) for r in accepted])
        return arrays, with_counts(MetricRecord(dict(metrics or {}) | mask_statistics(self._current, layers)), screened)

    def _masked(self, reply: AcceptedReply, layers: dict[str, MaskedLayer]) -> Message:
        """The reply (weights only) with each trainable array replaced by w_t + m * (w_k - w_t)."""
        weights = {name: apply_mask_to_update(self._current[name], array, layers[name].mask) if name in layers
                   else array for name, array in reply.weights.items()}
        return with_records(self.weights_only(reply), {reply.weights_key: encode(weights)})
