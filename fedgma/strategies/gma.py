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
fedgma.tools.bench). Every other strategy (median, trimmed mean, Krum, MultiKrum,
Bulyan, q-FedAvg) looks at the replies one by one, so it gets each client's
masked reply, as Flower's own differential-privacy wrappers hand on clipped ones.
Either way the wrapped strategy gets new messages: the received replies are not
edited.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from .arguments import check_choice, check_fraction
from .masking import MaskedLayer, apply_mask_to_update, gma_layer, mask_statistics
from .protocol import METRICS, WEIGHTS, with_content, with_records
from .records import encode
from .replies import AcceptedReply
from .wrapper import MaskingWrapper

#: Strategies whose server update starts from the weighted mean of the replies (and nothing else of them).
AVERAGING = (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)


class GMA(MaskingWrapper):
    """Gradient-masked averaging (journal version) wrapped around a strategy.

    A wrapper in the shape of Flower's differential-privacy wrappers: sampling,
    configuration and evaluation are the wrapped strategy's; the train replies are
    masked before it aggregates them. Replies with an error are left out; for
    screening, counts and resumption wrap it in :class:`~fedgma.strategies.ReplyGuard`.

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
    """

    def __init__(self, strategy: FedAvg, tau: float = 0.4, mask: str = "soft",
                 weighted_agreement: bool = False) -> None:
        if not isinstance(strategy, FedAvg):
            raise TypeError(f"GMA wraps Flower's Message-API strategies (subclasses of FedAvg, whose replies "
                            f"hold the client's weights); got {type(strategy).__name__}")
        super().__init__(strategy, weighted_agreement)
        self.tau = check_fraction("GMA threshold tau", tau)
        self.mask = check_choice("GMA mask", mask, ("soft", "hard"))

    def summary(self) -> None:
        log(INFO, "\t├──> GMA: %s mask, tau %s, %s agreement", self.mask, self.tau,
            "example-weighted" if self.weighted_agreement else "unweighted")
        self.strategy.summary()

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, weights, sign_weights = self.read(replies)
        if not replies:
            return None, None
        layers = {name: gma_layer(reference, [r.arrays[WEIGHTS][name] for r in replies], weights, self.tau,
                                  self.mask, sign_weights)
                  for name, reference in self._current.items()}
        if type(self.strategy) in AVERAGING:
            handed_on = [self._masked_mean(replies, layers)]
            log(INFO, "GMA: masked mean of %d replies goes to %s as one aggregate", len(replies),
                type(self.strategy).__name__)
        else:
            handed_on = [self._masked_reply(reply, layers) for reply in replies]
        arrays, inner_metrics = self.strategy.aggregate_train(server_round, handed_on)
        return arrays, MetricRecord(dict(inner_metrics or {}) | mask_statistics(self._current, layers))

    def _masked_mean(self, replies: list[AcceptedReply], layers: dict[str, MaskedLayer]) -> Message:
        """One reply holding the masked mean, the clients' total weight and their averaged metrics."""
        key = self.strategy.weighted_by_key
        metrics = self.strategy.train_metrics_aggr_fn([r.message.content for r in replies], key)
        content = RecordDict({WEIGHTS: encode({name: layer.weights for name, layer in layers.items()}),
                              METRICS: MetricRecord(dict(metrics) | {key: sum(r.num_examples for r in replies)})})
        return with_content(replies[0].message, content)

    def _masked_reply(self, reply: AcceptedReply, layers: dict[str, MaskedLayer]) -> Message:
        """The reply with its weights replaced by w_t + m * (w_k - w_t)."""
        return with_records(reply.message, {WEIGHTS: encode({
            name: apply_mask_to_update(reference, reply.arrays[WEIGHTS][name], layers[name].mask)
            for name, reference in self._current.items()})})
