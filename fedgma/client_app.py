"""Flower ClientApp: local training and local evaluation on one colored-MNIST partition.

The partition comes from ``context.node_config`` (``partition-id``,
``num-partitions``), which the simulation engine sets for each virtual SuperNode
and a real SuperNode takes from ``--node-config``, so the same ClientApp runs in
both. A SuperNode may also set ``data-dir`` in its node config to read MNIST from
its own folder. Everything else comes from the validated run config.

Per process, the settings, the model object and each partition are built once
and cached; a round only loads the received weights and trains.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .data import client_data, num_classes
from .model import build_model
from .records import encode
from .settings import ConfigError, Settings
from .strategies.fedgma import SEND_GRADIENT
from .strategies.replies import CLIENT, GRADIENT, NUM_EXAMPLES, PARTITION_ID, WEIGHTS
from .training import evaluate, prepare_model, shuffle_seed, train_local

app = ClientApp()


@lru_cache(maxsize=8)
def _settings(run_config: tuple, data_dir: str | None) -> Settings:
    settings = Settings.from_run_config(dict(run_config))
    return settings if data_dir is None else Settings.from_run_config(settings.to_run_config() | {"data-dir": data_dir})


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
def _model(outputs: int) -> torch.nn.Module:
    """One model object per process, reused every round (weights are overwritten)."""
    return prepare_model(build_model(outputs))


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


def _prepare(msg: Message, context: Context) -> tuple[Settings, int, int, torch.nn.Module]:
    settings = settings_of(context)
    pid, count = partition_of(context)
    threads = cpus_for_this_client(settings)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    model = _model(num_classes(settings.task))
    model.load_state_dict(msg.content[WEIGHTS].to_torch_state_dict())
    return settings, pid, count, model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train E local epochs from the received global weights and reply with the new weights.

    Adds the last local gradient as a second ArrayRecord when the strategy asks
    for it (``send-gradient`` in the train config, FedGMA), and FedProx's proximal
    term when the config carries ``proximal-mu``.
    """
    settings, pid, count, model = _prepare(msg, context)
    config = msg.content["config"]
    result = train_local(model, client_data(settings, pid, count), settings.local_epochs, settings.batch_size,
                         settings.optimizer, settings.lr, proximal_mu=float(config.get("proximal-mu", 0.0)),
                         shuffle_seed=shuffle_seed(settings.seed, pid, int(config.get("server-round", 0))),
                         precision=settings.precision)
    content = RecordDict({
        WEIGHTS: ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({NUM_EXAMPLES: result.num_examples, "train-loss": result.loss,
                                 "train-accuracy": result.accuracy}),
        CLIENT: _who(pid),
    })
    if config.get(SEND_GRADIENT, False):
        content[GRADIENT] = encode(result.last_gradient)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received global model on this client's own data."""
    settings, pid, count, model = _prepare(msg, context)
    data = client_data(settings, pid, count)
    loss, accuracy = evaluate(model, data, precision=settings.precision)
    metrics = MetricRecord({NUM_EXAMPLES: len(data.labels), "local-loss": loss, "local-accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics, CLIENT: _who(pid)}), reply_to=msg)


@app.query()
def who_am_i(msg: Message, context: Context) -> Message:
    """This node's partition id, so the server can sample and aggregate in a fixed order."""
    pid, _ = partition_of(context)
    return Message(content=RecordDict({CLIENT: _who(pid)}), reply_to=msg)


def _who(partition_id: int) -> ConfigRecord:
    """The ``client`` record of every reply: the server orders replies by it (see ReplyGuard)."""
    return ConfigRecord({PARTITION_ID: partition_id})
