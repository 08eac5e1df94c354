"""The colored-MNIST app on Flower's legacy API: ``ServerApp(server_fn=...)`` + ``ClientApp(client_fn=...)``.

For users whose server code uses ``flwr.server.strategy`` (legacy) strategies:
the same settings, data, model, NumPyClient, central evaluation and outputs
(``metrics.json``, ``metrics.csv``, ``model.pt``, ``accuracy.png``) as the main
app, with the legacy strategies of :mod:`fedgma.compat`. Run it with the app in
``examples/legacy/`` (README: "Legacy server apps"). Resuming is a Message-API
feature: the legacy round loop cannot start at a later round.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.client import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from .client_app import client_fn as message_client_fn
from .compat import APPEND_GRADIENT, LegacyFedGMA, LegacyGMA, LegacyGuard
from .model import build_model
from .numpy_client import ColoredMnistClient
from .outputs import RunRecorder, resolve_output_dir
from .server_app import CentralEvaluation
from .settings import LEGACY_STRATEGIES, ConfigError, Settings
from .strategies.replies import PARTITION_ID
from .training import prepare_model, resolve_device


class LegacyColoredMnistClient(ColoredMnistClient):
    """Adds what the legacy API cannot carry otherwise: the partition id as a metric (fixed
    aggregation order), the last gradient after the weights when LegacyFedGMA asks, and
    legacy FedProx's ``proximal_mu`` under this app's key."""

    def fit(self, parameters, config):
        config = dict(config) | ({"proximal-mu": config["proximal_mu"]} if "proximal_mu" in config else {})
        weights, num_examples, metrics = super().fit(parameters, config)
        if config.get(APPEND_GRADIENT):
            weights = weights + self.last_gradient
        return weights, num_examples, metrics | {PARTITION_ID: self.partition_id}


def legacy_client_fn(context: Context):
    message = message_client_fn(context)
    client = LegacyColoredMnistClient(message.settings, message.partition_id, message.model, message.data)
    return client.to_client()


def build_legacy_strategy(settings: Settings, initial: list[np.ndarray], evaluate_fn) -> LegacyGuard:
    """The legacy strategy named by ``settings.strategy`` (+ GMA if ``settings.gma``), screened."""
    if settings.strategy not in LEGACY_STRATEGIES:
        raise ConfigError(f"Run-config key 'strategy' = {settings.strategy!r} is offered by the Message-API app only; "
                          f"the legacy server app has {', '.join(LEGACY_STRATEGIES)}.")
    common = dict(fraction_fit=settings.fraction_train, fraction_evaluate=settings.fraction_evaluate,
                  min_fit_clients=1, min_evaluate_clients=1, min_available_clients=settings.min_available_nodes,
                  evaluate_fn=evaluate_fn, initial_parameters=ndarrays_to_parameters(initial),
                  on_fit_config_fn=lambda server_round: {"server-round": server_round})
    fedopt = dict(eta=settings.fedopt_eta, eta_l=settings.lr, tau=settings.fedopt_tau)
    betas = dict(beta_1=settings.fedopt_beta1, beta_2=settings.fedopt_beta2)
    inner = {
        "fedavg": lambda: FedAvg(**common), "fedgma": lambda: FedAvg(**common),
        "fedprox": lambda: FedProx(**common, proximal_mu=settings.proximal_mu),
        "fedavgm": lambda: FedAvgM(**common, server_learning_rate=settings.server_momentum_lr,
                                   server_momentum=settings.server_momentum),
        "fedadam": lambda: FedAdam(**common, **fedopt, **betas), "fedyogi": lambda: FedYogi(**common, **fedopt, **betas),
        "fedadagrad": lambda: FedAdagrad(**common, **fedopt),
    }[settings.strategy]()
    weighted = settings.agreement_weighting == "examples"
    if settings.max_examples or settings.max_update_norm:
        raise ConfigError("Run-config keys 'max-examples' and 'max-update-norm' are applied by the Message-API app "
                          "only; the legacy server app does not bound replies.")
    if settings.fedgma_control != "none":
        raise ConfigError("Run-config key 'fedgma-control' is not implemented by the legacy server app; run the "
                          "controls with the Message-API app (fedgma.server_app).")
    if settings.strategy == "fedgma":
        return LegacyFedGMA(inner, p=settings.p, server_lr=settings.server_lr, direction=settings.fedgma_direction,
                            weighted_agreement=weighted)
    if settings.gma:
        return LegacyGMA(inner, tau=settings.tau, mask=settings.mask, weighted_agreement=weighted)
    return LegacyGuard(inner)


def server_fn(context: Context) -> ServerAppComponents:
    settings = Settings.from_run_config(context.run_config)
    recorder = RunRecorder(resolve_output_dir(settings), settings)
    initial_model = build_model(settings.task, seed=settings.seed)
    names = list(initial_model.state_dict())
    initial = [tensor.numpy().copy() for tensor in initial_model.state_dict().values()]
    central: list[CentralEvaluation] = []

    def evaluate_fn(server_round: int, ndarrays: list[np.ndarray], config: dict):
        metrics = central[0](server_round, ArrayRecord({n: Array(np.asarray(a)) for n, a in zip(names, ndarrays)}))
        if server_round == settings.num_rounds:
            recorder.finish(central[0].latest.to_torch_state_dict())
        return (metrics["ood-loss"], dict(metrics)) if metrics is not None else None

    strategy = build_legacy_strategy(settings, initial, evaluate_fn)
    model = prepare_model(build_model(settings.task), resolve_device(settings.device))
    central.append(CentralEvaluation(settings, model, strategy, recorder))
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=settings.num_rounds,
                                                                      round_timeout=settings.round_timeout))


server = ServerApp(server_fn=server_fn)
client = ClientApp(client_fn=legacy_client_fn)
