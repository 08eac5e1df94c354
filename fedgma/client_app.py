"""Flower ClientApp: the colored-MNIST NumPyClient, served to Message-API strategies.

The client itself is a ``NumPyClient`` (:class:`fedgma.numpy_client.ColoredMnistClient`),
as most Flower code is written; :class:`fedgma.strategies.numpy_clients.NumPyClientAdapter` turns
its ``fit`` / ``evaluate`` into the ``@app.train`` / ``@app.evaluate`` replies the
strategies expect (FedGMA's last local gradient included).

The partition comes from ``context.node_config`` (``partition-id``,
``num-partitions``), which the simulation engine sets for each virtual SuperNode
and a real SuperNode takes from ``--node-config``, so the same ClientApp runs in
both. A SuperNode may also set ``data-dir`` in its node config to read MNIST from
its own folder. Everything else comes from the validated run config.

Per process, the settings, the model object and each partition are built once
and cached; a round only loads the received weights and trains.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.mod import LocalDpMod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace  # LocalDpMod's own noise

from fedgma.strategies.numpy_clients import NumPyClientAdapter
from .data import client_data
from .model import build_model
from .numpy_client import ColoredMnistClient
from .settings import ConfigError, Settings
from .machine import resolve_device
from .training import prepare_model


@lru_cache(maxsize=8)
def _settings(run_config: tuple, data_dir: str | None) -> Settings:
    settings = Settings.from_run_config(dict(run_config))
    return settings if data_dir is None else dataclasses.replace(settings, data_dir=data_dir)


def settings_of(context: Context) -> Settings:
    """Validated settings of this run; a SuperNode's ``data-dir`` node config wins."""
    data_dir = context.node_config.get("data-dir")
    return _settings(tuple(sorted(context.run_config.items())), None if data_dir is None else str(data_dir))


def partition_of(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config, checked."""
    try:
        pid, count = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise ConfigError(f"Node config lacks {missing}; start the SuperNode with "
                          "--node-config \"partition-id=I num-partitions=N\"") from None
    if not 0 <= pid < count:
        raise ConfigError(f"Node config partition-id={pid} is outside [0, num-partitions={count})")
    return pid, count


@lru_cache(maxsize=2)
def _model(task: str, device: str) -> torch.nn.Module:
    """One model object per process (on the run's device), reused every round (weights are overwritten)."""
    return prepare_model(build_model(task), resolve_device(device))


def cpus_for_this_client(settings: Settings) -> int:
    """``client-threads`` if set, else the CPUs Ray assigned to this client, else all cores."""
    if settings.client_threads:
        return settings.client_threads
    try:
        import ray

        if ray.is_initialized():
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if assigned:
                return max(1, int(assigned))
    except Exception:  # noqa: BLE001 - no Ray, or not inside a Ray worker
        pass
    return os.cpu_count() or 1


def client_fn(context: Context, client_class: type[ColoredMnistClient] = ColoredMnistClient) -> ColoredMnistClient:
    """This node's colored-MNIST NumPyClient (cached data and model; torch threads set); the legacy app passes
    its subclass."""
    settings = settings_of(context)
    pid, count = partition_of(context)
    threads = cpus_for_this_client(settings)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    model = _model(settings.task, settings.device)
    return client_class(settings, pid, model, client_data(settings, pid, count))


def local_dp(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``LocalDpMod`` on train replies when the run asks for ``dp='local'``.

    The update is clipped to ``dp-clipping-norm`` C and Gaussian noise for (``dp-epsilon``, ``dp-delta``) is
    added with sensitivity 2C: any two clipped updates of this client differ by at most 2C, so each reply is
    (epsilon, delta)-DP with respect to the client's whole data set. The noise comes from NumPy's global
    generator, unseeded on purpose: noise drawn from the run's seed could be recomputed and removed by the
    server, so local-DP runs are not bit-reproducible.
    """
    settings = settings_of(context)
    if settings.dp != "local":
        return call_next(msg, context)
    mod = LocalDpMod(settings.dp_clipping_norm, 2 * settings.dp_clipping_norm, settings.dp_epsilon,
                     settings.dp_delta)
    replies = []

    def train(message: Message, ctx: Context) -> Message:
        replies.append(call_next(message, ctx))
        return replies[-1]

    try:
        return mod(msg, context, train)
    except ZeroDivisionError:
        if not replies or not _unchanged(msg, replies[0]):
            raise
        return _noised_unchanged(replies[0], mod)


def _unchanged(sent: Message, reply: Message) -> bool:
    """Whether the reply's weights equal the weights sent, bit for bit (an update of norm 0)."""
    received = next(iter(sent.content.array_records.values()))
    returned = next(iter(reply.content.array_records.values()))
    return all(np.array_equal(received[key].numpy(), returned[key].numpy()) for key in received)


def _noised_unchanged(reply: Message, mod: LocalDpMod) -> Message:
    """LocalDpMod's output for an update of norm 0, which Flower 1.39 to 1.42 cannot clip.

    Their ``clip_inputs_inplace`` divides the clipping norm by the update's norm, so a client whose update is
    exactly zero fails with "float division by zero". That happens under local DP: once the noisy global
    model saturates, a client holding a single label (two digits on one side of 5 in the pathological split)
    gets gradients of exactly zero. Clipping leaves a zero update as it is, so the mechanism's output is the
    weights plus the same Gaussian noise as LocalDpMod's: standard deviation
    sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon, drawn with Flower's own noise function.
    """
    key, record = next(iter(reply.content.array_records.items()))
    arrays = record.to_numpy_ndarrays()
    add_gaussian_noise_inplace(arrays, mod.sensitivity * np.sqrt(2 * np.log(1.25 / mod.delta)) / mod.epsilon)
    reply.content[key] = ArrayRecord({name: Array(array) for name, array in zip(record.keys(), arrays, strict=True)})
    return reply


adapter = NumPyClientAdapter(client_fn)
app = adapter.app(train_mods=[local_dp])
