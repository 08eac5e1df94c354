"""Federated rounds in one Python process with plain PyTorch: the compute floor.

The structure of the seed repository's script: every round, each sampled client
trains sequentially from the global weights, then the server averages (FedAvg)
with the same NumPy function the strategies use. It runs the same data, model and
local training as the ClientApp, so ``fedgma.tools.bench`` can compare a Flower round
with this loop side by side; it is also a quick way to try hyper-parameters.

    python -m fedgma.tools.bare_loop --clients 10 --rounds 5 --run-config "data-dir='../shared/data/mnist'"
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from flwr.common.config import parse_config_args

from fedgma.data import client_data, test_sets
from fedgma.model import build_model
from fedgma.settings import Settings
from fedgma.strategies.masking import weighted_mean
from fedgma.machine import resolve_device
from fedgma.training import evaluate, prepare_model, shuffle_seed, train_local


def run_bare_loop(settings: Settings, num_clients: int, evaluate_each_round: bool = True,
                  on_round: Callable[[dict], None] | None = None) -> list[dict]:
    """FedAvg over ``num_clients`` partitions, all of them every round; one dict per round."""
    model = prepare_model(build_model(settings.task, seed=settings.seed), resolve_device(settings.device))
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = []
    for server_round in range(1, settings.num_server_rounds + 1):
        start = time.perf_counter()
        states, weights = [], []
        for pid in range(num_clients):
            model.load_state_dict(global_state)
            result = train_local(model, client_data(settings, pid, num_clients), settings.local_epochs,
                                 settings.batch_size, settings.optimizer, settings.lr,
                                 shuffle_seed=shuffle_seed(settings.seed, pid, server_round),
                                 precision=settings.precision)
            states.append({k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()})
            weights.append(result.num_examples)
        global_state = {k: torch.from_numpy(weighted_mean((s[k] for s in states), weights)) for k in global_state}
        row = {"round": server_round, "train-seconds": time.perf_counter() - start}
        if evaluate_each_round:
            model.load_state_dict(global_state)
            for name, data in test_sets(settings).items():
                row[f"{name}-loss"], row[f"{name}-accuracy"] = evaluate(model, data, precision=settings.precision)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if on_round:
            on_round(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10, help="number of clients (partitions), all train each round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--run-config", default="", help='run-config overrides, as for flwr run: "key=value ..."')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.from_run_config(parse_config_args([args.run_config]) if args.run_config else {})
    run_bare_loop(settings, args.clients, on_round=lambda row: print(
        " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True))


if __name__ == "__main__":
    main()
