"""FedGMA: the workshop version of gradient-masked federated optimization.

Tenison, Francis, Rish, "Gradient-Masked Federated Optimization", ICLR 2021
DPML workshop (arXiv 2104.10322), Algorithm 1. Per round t:

1. clients train from w_t and return their weights w_k and last local gradient g_k;
2. w_bar = sum n_k w_k / sum n_k (FedAvg);
3. g_bar = sum n_k (m * g_k) / sum n_k with the hard (AND-)mask m of the signs
   of the g_k at threshold p;
4. w_{t+1} = w_bar - eta_s * g_bar, with its own server step size eta_s.

With ``direction="pseudo-gradient"`` the masked direction is w_t - w_k instead of
g_k, so clients need not upload a second model-sized array.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..records import encode
from .guard import ReplyGuard, check_choice, check_fraction
from .masking import fedgma_layer, mask_statistics
from .replies import GRADIENT, NUM_EXAMPLES, WEIGHTS, AcceptedReply

#: Train-config flag that asks the ClientApp for its last local gradient.
SEND_GRADIENT = "send-gradient"


class FedGMA(ReplyGuard):
    """FedGMA (workshop version): FedAvg plus a masked server gradient step.

    Client sampling and federated evaluation are FedAvg's; only the train
    aggregation differs. Failed and malformed replies are screened out first
    (see :class:`ReplyGuard`).

    Parameters
    ----------
    fedavg : FedAvg
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
    **guard
        ``seed`` and ``min_accepted_fraction`` of :class:`ReplyGuard`.
    """

    def __init__(self, fedavg: FedAvg, p: float = 0.7, server_lr: float = 1e-4,
                 direction: str = "gradient", weighted_agreement: bool = False, **guard) -> None:
        super().__init__(fedavg, **guard)
        if server_lr < 0:
            raise ValueError(f"FedGMA server_lr must be >= 0, got {server_lr}")
        self.p = check_fraction("FedGMA threshold p", p)
        self.server_lr = server_lr
        self.direction = check_choice("FedGMA direction", direction, ("gradient", "pseudo-gradient"))
        self.weighted_agreement = weighted_agreement
        self.expected_records = (WEIGHTS, GRADIENT) if direction == "gradient" else (WEIGHTS,)

    def summary(self) -> None:
        log(INFO, "\t├──> FedGMA: hard mask p %s, server lr %s, masks the %s, %s agreement", self.p,
            self.server_lr, self.direction, "example-weighted" if self.weighted_agreement else "unweighted")
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[SEND_GRADIENT] = self.direction == "gradient"
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_accepted(self, server_round: int,
                           replies: list[AcceptedReply]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        weights = [r.num_examples for r in replies]
        sign_weights = weights if self.weighted_agreement else None
        layers = {}
        for name, reference in self.current_arrays.items():
            gradients = [r.arrays[GRADIENT][name] for r in replies] if self.direction == "gradient" else None
            layers[name] = fedgma_layer(reference, [r.arrays[WEIGHTS][name] for r in replies], weights, self.p,
                                        self.server_lr, gradients, sign_weights)
        metrics = self.strategy.train_metrics_aggr_fn([r.message.content for r in replies], NUM_EXAMPLES)
        return (encode({name: layer.weights for name, layer in layers.items()}),
                MetricRecord(dict(metrics) | mask_statistics(self.current_arrays, layers)))
