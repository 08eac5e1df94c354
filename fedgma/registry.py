"""The strategy table: run-config names to configured Flower strategies, for both of Flower's APIs.

``strategy`` picks the algorithm and ``gma`` adds the journal version's mask on
top. One table (:func:`algorithm_options`) holds each algorithm's knobs, read from
the settings once; the Message-API classes (``flwr.serverapp.strategy``) and the
legacy ones (``flwr.server.strategy``, :mod:`fedgma.legacy`) take them under the
same names, and only the sampling arguments differ between the two APIs.

Every Message-API strategy comes back wrapped in a :class:`ReplyGuard`, so failed
or malformed client replies are always counted and left out, whatever the
algorithm. GMA rewrites each reply to w_t + m * (w_k - w_t) before the wrapped
strategy aggregates: exact GMA over the averaging strategies, commuting with the
median and the trimmed mean, and refused (a ConfigError naming the keys) over Krum,
MultiKrum, Bulyan and q-FedAvg (:mod:`fedgma.strategies.composition`). FedGMA is its
own strategy ('fedgma'): its step is defined over FedAvg's weighted mean w_bar.
"""

from __future__ import annotations

from typing import Any

from flwr.server import strategy as legacy
from flwr.serverapp import strategy as message_api
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from fedgma.strategies.bounds import ReplyBounds
from fedgma.strategies.composition import CompositionError
from fedgma.strategies.gma import GMA
from fedgma.strategies.guard import ReplyGuard

from .controls import ControlledFedGMA
from .settings import ConfigError, Settings

#: Class names per run-config name; 'fedgma' is FedAvg wrapped by FedGMA. The legacy API has the first seven.
CLASSES = {"fedgma": "FedAvg", "fedavg": "FedAvg", "fedprox": "FedProx", "fedavgm": "FedAvgM",
           "fedadam": "FedAdam", "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad", "fedmedian": "FedMedian",
           "fedtrimmedavg": "FedTrimmedAvg", "krum": "Krum", "multikrum": "MultiKrum", "bulyan": "Bulyan",
           "qfedavg": "QFedAvg"}
LEGACY_CLASSES = {name: CLASSES[name] for name in list(CLASSES)[:7]}


def algorithm_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of ``settings.strategy``'s class beyond sampling (same names in both APIs)."""
    fedopt = dict(eta=settings.fedopt_eta, eta_l=settings.lr, tau=settings.fedopt_tau)
    betas = dict(beta_1=settings.fedopt_beta1, beta_2=settings.fedopt_beta2)
    return {
        "fedprox": dict(proximal_mu=settings.proximal_mu),
        "fedavgm": dict(server_learning_rate=settings.server_momentum_lr, server_momentum=settings.server_momentum),
        "fedadam": fedopt | betas, "fedyogi": fedopt | betas, "fedadagrad": fedopt,
        "fedtrimmedavg": dict(beta=settings.trimmed_beta),
        "krum": dict(num_malicious_nodes=settings.num_malicious_nodes),
        "multikrum": dict(num_malicious_nodes=settings.num_malicious_nodes,
                          num_nodes_to_select=settings.multikrum_select),
        "bulyan": dict(num_malicious_nodes=settings.num_malicious_nodes),
        # QFedAvg reads each client's training loss, which this app's clients report as 'train-loss'.
        "qfedavg": dict(client_learning_rate=settings.lr, q=settings.qfedavg_q, train_loss_key="train-loss"),
    }.get(settings.strategy, {})


def build_strategy(settings: Settings) -> ReplyGuard:
    """The Message-API strategy named by ``settings.strategy`` (+ GMA if ``settings.gma``), guarded."""
    if settings.secagg:
        raise ConfigError("Run-config key 'secagg' is true, but Flower offers SecAgg+ on its legacy API only "
                          "(SecAggPlusWorkflow needs a LegacyContext); run the legacy app: flwr run examples/legacy "
                          "--run-config \"secagg=true\" (docs/privacy.md).")
    sampling = dict(fraction_train=settings.fraction_train, fraction_evaluate=settings.fraction_evaluate,
                    min_train_nodes=1, min_evaluate_nodes=1 if settings.fraction_evaluate > 0 else 0,
                    min_available_nodes=settings.min_available_nodes)
    inner: Strategy = getattr(message_api, CLASSES[settings.strategy])(**sampling, **algorithm_options(settings))
    if settings.dp == "central":  # Settings refuses it with a mask
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner, noise_multiplier=settings.dp_noise_multiplier, clipping_norm=settings.dp_clipping_norm,
            num_sampled_clients=max(1, round(settings.fraction_train * settings.min_available_nodes)))
    weighted = settings.agreement_weighting == "examples"
    try:
        if settings.strategy == "fedgma":
            inner = ControlledFedGMA(inner, p=settings.p, server_lr=settings.server_lr,
                                     direction=settings.fedgma_direction, weighted_agreement=weighted,
                                     control=settings.fedgma_control, seed=settings.seed)
        elif settings.gma:
            inner = GMA(inner, tau=settings.tau, mask=settings.mask, weighted_agreement=weighted)
    except CompositionError as refused:
        raise ConfigError(f"Run-config keys strategy={settings.strategy!r}, gma={str(settings.gma).lower()}, "
                          f"agreement-weighting={settings.agreement_weighting!r}: {refused}") from None
    return ReplyGuard(inner, seed=settings.seed, min_accepted_fraction=settings.min_accepted_fraction,
                      bounds=ReplyBounds(settings.max_examples, settings.max_update_norm),
                      reproducible_sampling=settings.reproducible_sampling)


def build_legacy_inner(settings: Settings, **sampling: Any) -> legacy.Strategy:
    """The legacy (``flwr.server.strategy``) class of ``settings.strategy`` with the same knobs."""
    return getattr(legacy, LEGACY_CLASSES[settings.strategy])(**sampling, **algorithm_options(settings))
