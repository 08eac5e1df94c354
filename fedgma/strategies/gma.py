"""GMA: the journal version's gradient mask on top of any Flower strategy.

Tenison, Sreeramadas, Mugunthan, Oyallon, Rish, Belilovsky, "Gradient Masked
Averaging for Federated Learning", TMLR 2023 (arXiv 2201.11986).

GMA replaces the averaging step of an FL algorithm: the mean update
Delta = sum n_k Delta_k / sum n_k is masked coordinate-wise by a mask m built from
the signs of the client updates Delta_k = w_k - w_t, and the algorithm's own
server update then uses m * Delta where it would use Delta (FedAvg: w_t + m * Delta;
FedAvgM/FedAdam/FedYogi/FedAdagrad: -m * Delta is the server optimizer's
pseudo-gradient; FedProx: as FedAvg, the proximal term stays on the clients).

Because m is shared by all clients, rewriting each client's weights to
w_t + m * Delta_k before the wrapped strategy aggregates them yields exactly
w_t + m * Delta inside an averaging strategy, so one wrapper serves every Flower
strategy without touching their code. For the averaging ones (``AVERAGING``),
rather than re-encoding K replies for the wrapped strategy to decode and average
again, the wrapper computes that masked mean once and hands the wrapped strategy
a single reply holding it, with the clients' total ``num-examples`` and their
already averaged metrics: a weighted mean of one reply is that reply, so the
result is the same and the aggregation costs about as much as FedAvg's own (see
fedgma.bench). Every other strategy (median, trimmed mean, Krum, MultiKrum,
Bulyan, q-FedAvg) looks at the replies one by one, so it gets each client's
masked reply, as Flower's own differential-privacy wrappers hand on clipped ones.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from ..records import encode
from .guard import ReplyGuard, check_choice, check_fraction
from .masking import apply_mask_to_update, gma_layer, mask_statistics
from .replies import NUM_EXAMPLES, WEIGHTS, AcceptedReply

#: Strategies whose server update starts from the weighted mean of the replies (and nothing else of them).
AVERAGING = (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)


class GMA(ReplyGuard):
    """Gradient-masked averaging (journal version) wrapped around a strategy.

    Parameters
    ----------
    strategy : FedAvg
        The strategy whose aggregation is masked: any of Flower's Message-API
        strategies (all derive from FedAvg).
    tau : float (default: 0.4)
        Threshold on the sign agreement A_j in [0, 1]; coordinates with
        A_j >= tau are kept whole. 0.4 is the common default of public code.
    mask : str (default: "soft")
        "soft" scales the other coordinates by A_j (the journal version);
        "hard" zeroes them (AND-mask).
    weighted_agreement : bool (default: False)
        Weight each client's sign by its number of examples (declearn's option)
        instead of counting clients equally (the paper).
    **guard
        ``seed`` and ``min_accepted_fraction`` of :class:`ReplyGuard`.
    """

    def __init__(self, strategy: FedAvg, tau: float = 0.4, mask: str = "soft",
                 weighted_agreement: bool = False, **guard) -> None:
        if not isinstance(strategy, FedAvg):
            raise TypeError(f"GMA wraps Flower's Message-API strategies (subclasses of FedAvg, whose replies "
                            f"hold the client's weights); got {type(strategy).__name__}")
        super().__init__(strategy, **guard)
        self.tau = check_fraction("GMA threshold tau", tau)
        self.mask = check_choice("GMA mask", mask, ("soft", "hard"))
        self.weighted_agreement = weighted_agreement

    def summary(self) -> None:
        log(INFO, "\t├──> GMA: %s mask, tau %s, %s agreement", self.mask, self.tau,
            "example-weighted" if self.weighted_agreement else "unweighted")
        super().summary()

    def aggregate_accepted(self, server_round: int,
                           replies: list[AcceptedReply]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        weights = [r.num_examples for r in replies]
        sign_weights = weights if self.weighted_agreement else None
        layers = {name: gma_layer(reference, [r.arrays[WEIGHTS][name] for r in replies], weights, self.tau,
                                  self.mask, sign_weights)
                  for name, reference in self.current_arrays.items()}
        if type(self.strategy) not in AVERAGING:
            return self._aggregate_one_by_one(server_round, replies, layers)
        aggregate = replies[0].message  # reused as the carrier of the masked mean
        metrics = self.strategy.train_metrics_aggr_fn([r.message.content for r in replies], NUM_EXAMPLES)
        for key in list(aggregate.content.metric_records):
            del aggregate.content[key]
        aggregate.content[WEIGHTS] = encode({name: layer.weights for name, layer in layers.items()})
        aggregate.content["metrics"] = MetricRecord(dict(metrics) | {NUM_EXAMPLES: sum(weights)})
        log(INFO, "GMA: masked mean of %d replies goes to %s as one aggregate", len(replies),
            type(self.strategy).__name__)
        arrays, inner_metrics = self.strategy.aggregate_train(server_round, [aggregate])
        return arrays, MetricRecord(dict(inner_metrics or {}) | mask_statistics(self.current_arrays, layers))

    def _aggregate_one_by_one(self, server_round: int, replies: list[AcceptedReply],
                              layers: dict) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Each reply's weights replaced by w_t + m * (w_k - w_t), then the wrapped strategy's own aggregation."""
        for reply in replies:
            reply.message.content[WEIGHTS] = encode({
                name: apply_mask_to_update(reference, reply.arrays[WEIGHTS][name], layers[name].mask)
                for name, reference in self.current_arrays.items()})
        arrays, inner_metrics = self.strategy.aggregate_train(server_round, [r.message for r in replies])
        return arrays, MetricRecord(dict(inner_metrics or {}) | mask_statistics(self.current_arrays, layers))
