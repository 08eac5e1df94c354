"""Strategy registry: run-config names to configured Flower strategies.

``strategy`` picks the algorithm and ``gma`` adds the journal version's mask on
top. Every strategy comes back wrapped in a :class:`ReplyGuard` (GMA and FedGMA
are ReplyGuards themselves), so failed or malformed client replies are always
counted and left out, whatever the algorithm.

GMA is defined over every strategy: it rewrites each reply to w_t + m * (w_k - w_t)
before the wrapped strategy aggregates, so a robust aggregator (median, trimmed
mean, Krum, Bulyan) sees masked updates. FedGMA is its own strategy ('fedgma'):
its step is defined over FedAvg's weighted mean w_bar, which is what it uses.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (Bulyan, DifferentialPrivacyServerSideFixedClipping, FedAdagrad, FedAdam,
                                     FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum, MultiKrum,
                                     QFedAvg, Strategy)

from ..settings import Settings
from .bounds import ReplyBounds
from .fedgma import FedGMA
from .gma import GMA
from .guard import ReplyGuard


def build_strategy(settings: Settings) -> ReplyGuard:
    """The strategy named by ``settings.strategy`` (+ GMA if ``settings.gma``)."""
    common = dict(fraction_train=settings.fraction_train, fraction_evaluate=settings.fraction_evaluate,
                  min_train_nodes=1, min_evaluate_nodes=1 if settings.fraction_evaluate > 0 else 0,
                  min_available_nodes=settings.min_available_nodes)
    fedopt = dict(eta=settings.fedopt_eta, eta_l=settings.lr, tau=settings.fedopt_tau)
    adam_betas = dict(beta_1=settings.fedopt_beta1, beta_2=settings.fedopt_beta2)
    builders = {
        "fedavg": lambda: FedAvg(**common),
        "fedgma": lambda: FedAvg(**common),
        "fedprox": lambda: FedProx(**common, proximal_mu=settings.proximal_mu),
        "fedavgm": lambda: FedAvgM(**common, server_learning_rate=settings.server_momentum_lr,
                                   server_momentum=settings.server_momentum),
        "fedadam": lambda: FedAdam(**common, **fedopt, **adam_betas),
        "fedyogi": lambda: FedYogi(**common, **fedopt, **adam_betas),
        "fedadagrad": lambda: FedAdagrad(**common, **fedopt),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=settings.trimmed_beta),
        "krum": lambda: Krum(**common, num_malicious_nodes=settings.num_malicious_nodes),
        "multikrum": lambda: MultiKrum(**common, num_malicious_nodes=settings.num_malicious_nodes,
                                       num_nodes_to_select=settings.multikrum_select),
        "bulyan": lambda: Bulyan(**common, num_malicious_nodes=settings.num_malicious_nodes),
        # QFedAvg reads each client's training loss, which this app's clients report as 'train-loss'.
        "qfedavg": lambda: QFedAvg(client_learning_rate=settings.lr, q=settings.qfedavg_q,
                                   train_loss_key="train-loss", **common),
    }
    inner: Strategy = builders[settings.strategy]()
    if settings.dp == "central":  # Settings refuses it with a mask
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner, noise_multiplier=settings.dp_noise_multiplier, clipping_norm=settings.dp_clipping_norm,
            num_sampled_clients=max(1, round(settings.fraction_train * settings.min_available_nodes)))
    weighted = settings.agreement_weighting == "examples"
    guard = dict(seed=settings.seed, min_accepted_fraction=settings.min_accepted_fraction,
                 bounds=ReplyBounds(settings.max_examples, settings.max_update_norm))
    if settings.strategy == "fedgma":
        return FedGMA(inner, p=settings.p, server_lr=settings.server_lr, direction=settings.fedgma_direction,
                      weighted_agreement=weighted, control=settings.fedgma_control, **guard)
    if settings.gma:
        return GMA(inner, tau=settings.tau, mask=settings.mask, weighted_agreement=weighted, **guard)
    return ReplyGuard(inner, **guard)
