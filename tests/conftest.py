"""Shared test helpers: real MNIST location, Flower message builders, tiny settings."""

from __future__ import annotations

import os
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF
from flwr.proto.node_pb2 import NodeInfo
from flwr.supercore.task_identity import TaskIdentity

from fedgma.strategies.records import encode

REPO = Path(__file__).resolve().parents[1]

#: client-resources-num-cpus for the end-to-end tests whose point is not clients training side by side: on a
#: 2-core machine one Ray actor per run instead of two, so one torch import and partition build fewer per run
#: (the suite runs two test files at once, which keeps both cores busy anyway). The reliability, fault and
#: main simulation tests keep two actors: replies arriving in either order is part of what they check.
ONE_ACTOR = min(2, len(os.sched_getaffinity(0)))
MNIST_DIR = Path(os.environ.get("FEDGMA_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist")).resolve()


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST IDX files expected in {MNIST_DIR} (set FEDGMA_MNIST_DIR)")
    return MNIST_DIR


@pytest.fixture(autouse=True)
def task_identity():
    """Flower 1.41 refuses to build a Message outside a running task; pretend to be one."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def simulated_nodes(node_ids):
    """NodeInfo as Flower's simulation engine lists its virtual nodes: heartbeats off, registered in this order."""
    return [NodeInfo(node_id=node, heartbeat_interval=HEARTBEAT_INTERVAL_INF,
                     registered_at=f"2026-12-06T03:00:00.{i:06d}+00:00") for i, node in enumerate(node_ids)]


def grid_with(node_ids, nodes=None):
    """A Grid of these node ids; ``get_nodes`` lists them as Flower's base Grid does (ids only), or ``nodes``."""
    grid = Mock()
    grid.get_node_ids.return_value = list(node_ids)
    grid.get_nodes.return_value = [NodeInfo(node_id=node) for node in node_ids] if nodes is None else nodes
    return grid


def send(strategy, arrays: dict[str, np.ndarray], node_ids=(1, 2, 3), server_round: int = 1) -> list[Message]:
    """configure_train through the real strategy; returns the instructions it built, by node id (Flower's sampler
    shuffles them, and the tests give client i the i-th instruction)."""
    instructions = strategy.configure_train(server_round, encode(arrays), ConfigRecord(), grid_with(node_ids))
    return sorted(instructions, key=lambda message: message.metadata.dst_node_id)


def reply(instruction: Message, weights: dict[str, np.ndarray], num_examples=10,
          gradient: dict[str, np.ndarray] | None = None, **metrics) -> Message:
    content = RecordDict({"arrays": encode(weights),
                          "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0, **metrics})})
    if gradient is not None:
        content["gradient"] = encode(gradient)
    return Message(content, reply_to=instruction)


def error_reply(instruction: Message) -> Message:
    return Message(Error(code=0, reason="client crashed"), reply_to=instruction)


def layers(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A small two-layer model's arrays."""
    return {"w": (scale * rng.standard_normal((4, 3))).astype(np.float32),
            "b": (scale * rng.standard_normal(3)).astype(np.float32)}


def tracking_env(folder: Path) -> dict[str, str]:
    """Environment for runs that log to the tracking tools: W&B's caches and settings in ``folder`` (not the
    user's home), and MLflow's and W&B's usage telemetry off (tests use no network)."""
    return {"WANDB_CACHE_DIR": str(folder / "wandb-cache"), "WANDB_DATA_DIR": str(folder / "wandb-data"),
            "WANDB_CONFIG_DIR": str(folder / "wandb-config"), "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true"}


@pytest.fixture
def tracking_home(tmp_path, monkeypatch) -> Path:
    for key, value in tracking_env(tmp_path / "tracking-home").items():
        monkeypatch.setenv(key, value)
    return tmp_path / "tracking-home"


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the TensorBoard event files in ``folder``, read with TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def mlflow_run(folder: Path):
    """The one MLflow run in ``folder``'s SQLite store and its client (MLflow's own MlflowClient)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedgma")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def wandb_records(folder: Path) -> list[dict]:
    """The records of the one offline W&B run under ``folder``, as W&B's own reader prints them
    (``wandb leet inspect --json``)."""
    import json
    import subprocess
    import sys

    (log,) = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(log), "--json"], capture_output=True,
                          text=True, timeout=120, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
