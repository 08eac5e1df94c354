"""Time one ``aggregate_train`` call for K clients of the 579,009-parameter CNN.

Flower's own FedAvg and FedAdam (unwrapped, as a user would run them) against
this project's FedGMA (both directions) and GMA over FedAdam, all on the same
kind of synthetic replies: the global model plus small random updates,
``num-examples`` 600 each. Part of ``python -m fedgma.tools.bench``; alone (no
simulation)::

    python -m fedgma.tools.bench.aggregation 10,100,1000
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy
from flwr.supercore.task_identity import TaskIdentity

from fedgma.model import build_model
from fedgma.strategies.records import encode
from fedgma.strategies import GMA, FedGMA

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "fedavg (Flower)": lambda: FedAvg(min_available_nodes=1, min_train_nodes=1),
    "fedgma (gradient)": lambda: FedGMA(FedAvg(min_available_nodes=1, min_train_nodes=1), p=0.7,
                                        direction="gradient"),
    "fedgma (pseudo-gradient)": lambda: FedGMA(FedAvg(min_available_nodes=1, min_train_nodes=1), p=0.7),
    "fedadam (Flower)": lambda: FedAdam(min_available_nodes=1, min_train_nodes=1),
    "gma + fedadam": lambda: GMA(FedAdam(min_available_nodes=1, min_train_nodes=1), tau=0.4),
}


class _Grid:
    """Just enough of a Grid for ``configure_train``: K connected nodes."""

    def __init__(self, k: int) -> None:
        self.nodes = list(range(1, k + 1))

    def get_node_ids(self):
        return self.nodes


def _as_task() -> None:
    """Flower 1.41 refuses to build Messages outside a running task; the benchmark is one."""
    if TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def time_aggregation(name: str, k: int, seed: int = 0) -> float:
    """Seconds of one ``aggregate_train`` of strategy ``name`` over K fresh replies."""
    _as_task()
    rng = np.random.default_rng(seed)
    reference = {n: t.numpy() for n, t in build_model("binary", seed=seed).state_dict().items()}
    strategy = STRATEGIES[name]()
    instructions = list(strategy.configure_train(1, encode(reference), ConfigRecord(), _Grid(k)))
    wants_gradient = bool(instructions[0].content["config"].get("send-gradient", False))
    pool = [{n: (0.01 * rng.standard_normal(a.shape)).astype(np.float32) for n, a in reference.items()}
            for _ in range(8)]  # distinct enough for the mask; drawing K updates would dominate the run
    replies = []
    for i, instruction in enumerate(instructions):
        update = pool[i % len(pool)]
        content = RecordDict({"arrays": encode({n: reference[n] + u for n, u in update.items()}),
                              "metrics": MetricRecord({"num-examples": 600, "train-loss": 0.5})})
        if wants_gradient:
            content["gradient"] = encode(update)
        replies.append(Message(content, reply_to=instruction))
    start = time.perf_counter()
    strategy.aggregate_train(1, replies)
    return time.perf_counter() - start


def measure_aggregation(ks: list[int], progress: Callable[[str], None] = print) -> list[dict]:
    """Best-of-two seconds per strategy and K, with the ratios to Flower's FedAvg and FedAdam measured beside."""
    rows = []
    for k in ks:
        progress(f"aggregation, K = {k}")
        times = {name: min(time_aggregation(name, k, seed) for seed in (0, 1)) for name in STRATEGIES}
        rows += [{"k": k, "strategy": name, "seconds": seconds, "ratio_to_fedavg": seconds / times["fedavg (Flower)"],
                  "ratio_to_fedadam": seconds / times["fedadam (Flower)"]} for name, seconds in times.items()]
    return rows


if __name__ == "__main__":
    for row in measure_aggregation([int(k) for k in (sys.argv[1] if len(sys.argv) > 1 else "10,100,1000").split(",")]):
        print(f"K {row['k']:>5}  {row['strategy']:<26} {row['seconds']:.4f} s  {row['ratio_to_fedavg']:.2f}x FedAvg  "
              f"{row['ratio_to_fedadam']:.2f}x FedAdam")
