"""The colored-MNIST app on Flower's legacy API: legacy strategies in Flower's ``DefaultWorkflow`` +
``ClientApp(client_fn=...)``.

For users whose server code uses ``flwr.server.strategy`` (legacy) strategies:
the same settings, data, model, NumPyClient, central evaluation and outputs
(``metrics.json``, ``metrics.csv``, ``model.pt``, ``accuracy.png``) as the main
app, with the legacy strategies of :mod:`fedgma.legacy.strategies` and the
strategy table of :mod:`fedgma.registry`. Run it with the app in
``examples/legacy/``. Resuming is a Message-API feature (the legacy round loop
cannot start at a later round), so ``resume=true`` is refused before round 1 and
no checkpoint is written.

The server runs Flower's ``DefaultWorkflow`` (the legacy round loop as a workflow)
rather than ``ServerApp(server_fn=...)`` because that is where Flower's secure
aggregation plugs in: with ``secagg=true`` the fit step is ``SecAggPlusWorkflow``
and the clients' ``secaggplus_mod`` masks their replies
(:mod:`fedgma.strategies.secagg`). The client mods only act on messages that ask
for them, so one ClientApp serves plain and secure runs.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.client import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid

from ..client_app import client_fn as colored_mnist_client_fn
from fedgma.strategies.protocol import APPEND_GRADIENT, PARTITION_ID, PROXIMAL_MU, SERVER_ROUND
from fedgma.strategies.secagg import SecAggPlus, secagg_reply_mod, secaggplus_when_asked

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
    if settings.dp != "none":
        raise ConfigError(f"Run-config key 'dp' = {settings.dp!r} is applied by the Message-API app only "
                          "(fedgma.server_app); the legacy server app has no differential privacy.")
    secagg = secagg_settings(settings) if settings.secagg else None
    if settings.fedgma_control != "none":
        raise ConfigError("Run-config key 'fedgma-control' is not implemented by the legacy server app; run the "
                          "controls with the Message-API app (fedgma.server_app).")
    if settings.strategy == "fedgma":
        return LegacyFedGMA(inner, p=settings.p, server_lr=settings.server_lr, direction=settings.fedgma_direction,
                            weighted_agreement=weighted, secagg=secagg)
    if settings.gma:
        return LegacyGMA(inner, tau=settings.tau, mask=settings.mask, weighted_agreement=weighted, secagg=secagg)
    return LegacyGuard(inner, secagg)


#: No client can hold more examples than MNIST's training set.
MNIST_TRAIN_SIZE = 60_000


def secagg_settings(settings: Settings) -> SecAggPlus:
    """The run's SecAgg+ settings; each stage of the protocol waits at most the round timeout."""
    return SecAggPlus(max_weight=settings.secagg_max_weight or settings.max_client_examples or MNIST_TRAIN_SIZE,
                      clipping_range=settings.secagg_clipping_range,
                      quantization_range=settings.secagg_quantization_range,
                      num_shares=settings.secagg_num_shares,
                      reconstruction_threshold=settings.secagg_reconstruction_threshold,
                      timeout=settings.round_timeout)


def legacy_run(context: Context) -> tuple[LegacyContext, DefaultWorkflow]:
    """The run's legacy context (strategy, rounds, timeout) and workflow (SecAgg+'s fit step if asked)."""
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
        if server_round == settings.num_server_rounds:
            recorder.finish(central[0].latest.to_torch_state_dict())
        return (metrics["ood-loss"], dict(metrics)) if metrics is not None else None

    strategy = build_legacy_strategy(settings, initial, evaluate_fn)
    model = prepare_model(build_model(settings.task), resolve_device(settings.device))
    central.append(CentralEvaluation(settings, model, strategy, recorder, checkpoint_state=None))
    config = ServerConfig(num_rounds=settings.num_server_rounds, round_timeout=settings.round_timeout)
    workflow = DefaultWorkflow(fit_workflow=strategy.secagg.workflow() if strategy.secagg is not None else None)
    return LegacyContext(context=context, config=config, strategy=strategy), workflow


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    legacy_context, workflow = legacy_run(context)
    workflow(grid, legacy_context)


client = ClientApp(client_fn=legacy_client_fn, mods=[secaggplus_when_asked, secagg_reply_mod])
