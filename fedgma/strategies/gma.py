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
from .composition import WEIGHTED_MEAN, check_weighted_agreement, gma_aggregation
from .folding import MeanFold, mean_fold_of
from .masking import MaskedLayer, apply_mask_to_update, gma_layer, gma_masked, mask_statistics
from .protocol import with_records
from .records import encode
from .replies import AcceptedReply
from .sums import SignSums
from .trainable import Trainable, trainable_names
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

    def fold(self) -> GMAFold | None:
        """This round's aggregation from running sums (:mod:`.folding`), over a weighted mean only: a
        coordinate-wise aggregator needs every masked reply."""
        base = mean_fold_of(self.strategy) if self.aggregation == WEIGHTED_MEAN else None
        return None if base is None else GMAFold(self, base)

    def _masked(self, reply: AcceptedReply, layers: dict[str, MaskedLayer]) -> Message:
        """The reply (weights only) with each trainable array replaced by w_t + m * (w_k - w_t)."""
        weights = {name: apply_mask_to_update(self._current[name], array, layers[name].mask) if name in layers
                   else array for name, array in reply.weights.items()}
        return with_records(self.weights_only(reply), {reply.weights_key: encode(weights)})


class GMAFold:
    """GMA over a weighted mean from running sums: the weighted sum of the clients' weights (the wrapped
    strategy's :class:`~.folding.MeanFold`) and the sign sums of their updates w_k - w_t; at the end
    w_t + m * (w_bar - w_t), which is what averaging the masked replies gives, because m is shared."""

    def __init__(self, gma: GMA, base: MeanFold) -> None:
        self.gma, self.base = gma, base
        self.names = trainable_names(gma._current, gma.trainable)
        self.signs = SignSums(weighted=gma.weighted_agreement)

    def add(self, reply: AcceptedReply) -> None:
        self.base.add(reply)
        self.signs.add({name: reply.weights[name] for name in self.names}, reply.num_examples,
                       reference=self.gma._current)

    def result(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current, mean, agreement = self.gma._current, self.base.mean(), self.signs.agreement()
        layers = {name: gma_masked(current[name], mean[name], agreement[name], self.gma.tau, self.gma.mask)
                  for name in self.names}
        arrays, metrics = self.base.finish(server_round, mean | {name: layer.weights for name, layer in layers.items()})
        return arrays, MetricRecord(dict(metrics or {}) | mask_statistics(current, layers))
