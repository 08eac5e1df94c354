"""The colored-MNIST client as a Flower ``NumPyClient``.

Parameters travel as a list of NumPy arrays in the model's ``state_dict`` order.
``fit`` trains from the received weights with :func:`fedgma.training.train_local`
and keeps the last local gradient in ``last_gradient`` (FedGMA's gradient
direction asks for it; :mod:`fedgma.strategies.numpy_clients` sends it); ``evaluate`` tests on the
client's own partition. The ClientApp (:mod:`fedgma.client_app`) serves it
through :class:`fedgma.strategies.numpy_clients.NumPyClientAdapter`, so this is the app's only
training path.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.client import NumPyClient

from fedgma.strategies.protocol import PROXIMAL_MU, SERVER_ROUND

from .data import ColoredData
from .settings import Settings
from .training import evaluate, shuffle_seed, train_local


class ColoredMnistClient(NumPyClient):
    """One client: its partition ``data`` and a (reused) ``model`` object, configured by ``settings``."""

    def __init__(self, settings: Settings, partition_id: int, model: torch.nn.Module, data: ColoredData) -> None:
        self.settings = settings
        self.partition_id = partition_id
        self.model = model
        self.data = data
        self.last_gradient: list[np.ndarray] | None = None

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        return [tensor.detach().cpu().numpy().copy() for tensor in self.model.state_dict().values()]

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        names = list(self.model.state_dict())
        if len(parameters) != len(names):
            raise ValueError(f"received {len(parameters)} arrays for a model of {len(names)} ({', '.join(names)})")
        self.model.load_state_dict({name: torch.from_numpy(np.asarray(p)) for name, p in zip(names, parameters)})

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """E local epochs from ``parameters``; FedProx's proximal term when the config has ``proximal-mu``."""
        self.set_parameters(parameters)
        s = self.settings
        result = train_local(self.model, self.data, s.local_epochs, s.batch_size, s.optimizer, s.lr,
                             proximal_mu=float(config.get(PROXIMAL_MU, 0.0)),
                             shuffle_seed=shuffle_seed(s.seed, self.partition_id, int(config.get(SERVER_ROUND, 0))),
                             precision=s.precision)
        self.last_gradient = [result.last_gradient[name] for name, _ in self.model.named_parameters()]
        metrics = {"train-loss": result.loss, "train-accuracy": result.accuracy}
        return self.get_parameters({}), result.num_examples, metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        self.set_parameters(parameters)
        loss, accuracy = evaluate(self.model, self.data, precision=self.settings.precision)
        return loss, len(self.data.labels), {"local-accuracy": accuracy}
