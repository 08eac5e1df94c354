"""The conformance apps' shared server loop: one app's own strategy under each wrapper, one ``start`` each.

Copied into every conformance app's package by tests/test_conformance.py, so the
app's own ServerApp can run plain FedAvg, GMA(FedAvg), GMA(FedAdam) and FedGMA
(pseudo-gradient; and gradient where the app's client sends gradients) on one
simulated federation, in one ``flwr run``, and record for each: the central loss
by round (the app's own evaluation), the aggregated train metrics (the mask
diagnostics among them) and whether the saved final model evaluates to finite
numbers (the app's own save and reload).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedgma import GMA, FedGMA


def mnist(data_dir: str, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images (uint8, N x 28 x 28) and labels of MNIST's ``split`` from the IDX files: the
    local data source that replaces each example's download."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    with gzip.open(Path(data_dir) / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return images, labels


def variants(options: dict, gradient: bool) -> dict[str, Callable]:
    """Strategy factories over the app's own FedAvg options (record keys, callbacks, sampling)."""
    made = {"fedavg": lambda: FedAvg(**options),
            "gma-fedavg": lambda: GMA(FedAvg(**options)),
            "gma-fedadam": lambda: GMA(FedAdam(**options, eta=0.01, eta_l=0.01)),
            "fedgma": lambda: FedGMA(FedAvg(**options))}
    if gradient:
        made["fedgma-gradient"] = lambda: FedGMA(FedAvg(**options), direction="gradient", server_lr=0.01)
    return made


def run_variants(grid: Grid, context: Context, initial: ArrayRecord, central_loss: Callable[[ArrayRecord], float],
                 saved_model_finite: Callable[[ArrayRecord, str], bool], options: dict | None = None,
                 gradient: bool = False, train_config: ConfigRecord | None = None) -> None:
    """Run every variant for ``num-server-rounds`` and write what each did to ``results-path``."""
    results = {}
    for name, make in variants(options or {}, gradient).items():
        losses: dict[int, float] = {}

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            losses[server_round] = float(central_loss(arrays))
            return MetricRecord({"central-loss": losses[server_round]})

        result = make().start(grid=grid, initial_arrays=initial, num_rounds=int(context.run_config["num-server-rounds"]),
                              train_config=ConfigRecord(dict(train_config or {})), evaluate_fn=evaluate)
        results[name] = {"losses": losses,
                         "train-metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
                         "saved-model-finite": bool(saved_model_finite(result.arrays, name))}
    Path(str(context.run_config["results-path"])).write_text(json.dumps(results))
