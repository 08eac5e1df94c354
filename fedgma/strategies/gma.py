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
w_t + m * Delta_k before the wrapped strategy averages them yields exactly
w_t + m * Delta inside it. So this one wrapper serves every built-in strategy
without touching their code.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from .guard import ReplyGuard
from .masking import apply_mask_to_update, mask_statistics, masks_by_layer
from ..records import encode
from .replies import WEIGHTS, AcceptedReply


class GMA(ReplyGuard):
    """Gradient-masked averaging (journal version) wrapped around a strategy.

    Parameters
    ----------
    strategy : Strategy
        The Message-API strategy whose averaging step is masked (FedAvg, FedProx,
        FedAvgM, FedAdam, FedYogi, FedAdagrad).
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

    def __init__(self, strategy: Strategy, tau: float = 0.4, mask: str = "soft",
                 weighted_agreement: bool = False) -> None:
        super().__init__(strategy)
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"GMA threshold tau must lie in [0, 1], got {tau}")
        if mask not in ("soft", "hard"):
            raise ValueError(f"GMA mask must be 'soft' or 'hard', got {mask!r}")
        self.tau = tau
        self.mask = mask
        self.weighted_agreement = weighted_agreement

    def summary(self) -> None:
        log(INFO, "\t├──> GMA: %s mask, tau %s, %s agreement", self.mask, self.tau,
            "example-weighted" if self.weighted_agreement else "unweighted")
        super().summary()

    def aggregate_accepted(self, server_round: int,
                           replies: list[AcceptedReply]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        reference = self.current_arrays
        weights = [r.num_examples for r in replies] if self.weighted_agreement else None
        masks, agreements = masks_by_layer(
            ((name, (r.arrays[WEIGHTS][name] - ref for r in replies)) for name, ref in reference.items()),
            self.tau, self.mask, weights)
        for reply in replies:
            client = reply.arrays[WEIGHTS]
            reply.message.content[WEIGHTS] = encode(
                {name: apply_mask_to_update(ref, client[name], masks[name]) for name, ref in reference.items()})
        arrays, metrics = super().aggregate_accepted(server_round, replies)
        return arrays, MetricRecord(dict(metrics or {}) | mask_statistics(masks, agreements))
