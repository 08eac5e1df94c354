"""The colored-MNIST app on Flower's legacy API: ``ServerApp(server_fn=...)`` + ``ClientApp(client_fn=...)``.

For users whose server code uses ``flwr.server.strategy`` (legacy) strategies:
the same settings, data, model, NumPyClient, central evaluation and outputs
(``metrics.json``, ``metrics.csv``, ``model.pt``, ``accuracy.png``) as the main
app, with the legacy strategies of :mod:`fedgma.legacy.strategies` and the
strategy table of :mod:`fedgma.registry`. Run it with the app in
``examples/legacy/``. Resuming is a Message-API feature (the legacy round loop
cannot start at a later round), so ``resume=true`` is refused before round 1 and
no checkpoint is written.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.client import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from ..client_app import client_fn as colored_mnist_client_fn
from fedgma.strategies.protocol import APPEND_GRADIENT, PARTITION_ID, PROXIMAL_MU, SERVER_ROUND

from ..registry import LEGACY_CLASSES, build_legacy_inner
from .strategies import LegacyFedGMA, LegacyGMA, LegacyGuard
from ..model import build_model
from ..numpy_client import ColoredMnistClient
from ..outputs import RunRecorder, resolve_output_dir
from ..evaluation import CentralEvaluation
from ..settings import ConfigError, Settings
from ..machine import resolve_device
from ..training import prepare_model


class LegacyColoredMnistClient(ColoredMnistClient):
    """Adds what the legacy API cannot carry otherwise: the partition id as a metric (fixed
    aggregation order), the last gradient after the weights when LegacyFedGMA asks, and
    legacy FedProx's ``proximal_mu`` under this app's key."""

    def fit(self, parameters, config):
        config = dict(config) | ({PROXIMAL_MU: config["proximal_mu"]} if "proximal_mu" in config else {})
        weights, num_examples, metrics = super().fit(parameters, config)
        if config.get(APPEND_GRADIENT):
            weights = weights + self.last_gradient
        return weights, num_examples, metrics | {PARTITION_ID: self.partition_id}


def legacy_client_fn(context: Context):
    return colored_mnist_client_fn(context, LegacyColoredMnistClient).to_client()


def build_legacy_strategy(settings: Settings, initial: list[np.ndarray], evaluate_fn) -> LegacyGuard:
    """The legacy strategy named by ``settings.strategy`` (+ GMA if ``settings.gma``), screened."""
    if settings.strategy not in LEGACY_CLASSES:
        raise ConfigError(f"Run-config key 'strategy' = {settings.strategy!r} is offered by the Message-API app only; "
                          f"the legacy server app has {', '.join(LEGACY_CLASSES)}.")
    inner = build_legacy_inner(settings, fraction_fit=settings.fraction_train,
                               fraction_evaluate=settings.fraction_evaluate, min_fit_clients=1,
                               min_evaluate_clients=1, min_available_clients=settings.min_available_nodes,
                               evaluate_fn=evaluate_fn, initial_parameters=ndarrays_to_parameters(initial),
                               on_fit_config_fn=lambda server_round: {SERVER_ROUND: server_round})
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
    if settings.resume:
        raise ConfigError("Run-config key 'resume' is true, but the legacy server app cannot resume (Flower's legacy "
                          "round loop always starts at round 1); resume with the Message-API app "
                          "(fedgma.server_app), or start the run again in a new 'output-dir'.")
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
    central.append(CentralEvaluation(settings, model, strategy, recorder, checkpoint_state=None))
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=settings.num_rounds,
                                                                      round_timeout=settings.round_timeout))


server = ServerApp(server_fn=server_fn)
client = ClientApp(client_fn=legacy_client_fn)
