"""Benchmark: Flower simulation vs the bare PyTorch loop, aggregation cost, memory, throughput.

    python -m fedgma.tools.bench --data-dir ../shared/data/mnist            # defaults: 10 to 40 minutes on 2 CPU cores
    python -m fedgma.tools.bench --data-dir ../shared/data/mnist --quick    # a tiny smoke run (a few minutes)

Measured side by side in one run, on the same data, model and local training:

1. round time of the bare loop (``fedgma.tools.bare_loop``: clients trained one after
   another in this process, then FedAvg; the compute floor) and of ``flwr run``
   with FedAvg and with FedGMA (Ray, ``client-resources-num-cpus=1``); median of
   the rounds after the first, the first round's extra cost, and the launch
   overhead (wall time of ``flwr run`` not spent in rounds);
2. one ``aggregate_train`` call for K clients of the 579,009-parameter CNN;
3. the RSS of the whole process tree at the end of every round of a longer,
   light simulation, to show whether memory grows with rounds;
4. training throughput per core in fp32 and bf16 against the same core's
   matrix-multiplication ceiling (``fedgma.tools.bench.throughput``);
5. on a GPU (``--device cuda``, or ``auto`` where torch sees one): the main
   comparison's setup with 0.1, 0.25 and 0.5 GPU per client (seconds per round,
   ratio to the bare loop on the same GPU, GPU memory of one client process), and
   with ``--seed-experiment`` the end-to-end wall time of ``configs/seed-repo.toml``
   (50 rounds) at the fastest fraction.

Writes ``report.json`` to ``--out`` and prints tables. Round time and memory against the clients per round
and the number of virtual clients: ``python -m fedgma.tools.bench.scale``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from flwr.common.logger import FLOWER_LOGGER

from fedgma.machine import machine, resolve_device
from fedgma.outputs import versions

from . import throughput
from .aggregation import measure_aggregation
from ..local_flower import LocalFlower
from .report import print_tables
from .runs import bare, seed_experiment, simulation

def gpu_sharing(flower: LocalFlower, config: dict[str, Any], clients: int, fractions: list[float], out: Path,
                cpus_per_client: int, floor_s: float) -> list[dict[str, Any]]:
    """The round time with each fraction of a GPU per client (clients at once: GPUs / fraction, capped by CPUs)."""
    rows = []
    for fraction in fractions:
        run = simulation(flower, config, clients, out / f"gpu-{fraction}", cpus_per_client, fraction)
        at_once = min(math.floor(torch.cuda.device_count() / fraction), (os.cpu_count() or 1) // cpus_per_client)
        rows.append({"gpus_per_client": fraction, "clients_at_once": at_once, **run,
                     "ratio_to_bare": run["median_round_s"] / floor_s})
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="", help="folder with the four MNIST IDX .gz files ('' = torchvision)")
    parser.add_argument("--out", default="bench-results", help="folder for report.json and the plot")
    parser.add_argument("--clients", type=int, default=100, help="clients per round in the main comparison")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measured run (the first is set apart)")
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=0, help="0 = full batch (the seed's setup)")
    parser.add_argument("--client-examples", type=int, default=0,
                        help="cap on examples per client (0 = all: about 600 with 100 clients, the seed's setup)")
    parser.add_argument("--test-examples", type=int, default=1000, help="test examples per test set")
    parser.add_argument("--aggregation-k", default="10,100,1000",
                        help="clients per aggregate_train call ('' skips this part)")
    parser.add_argument("--cpus-per-client", type=int, default=1,
                        help="client-resources-num-cpus of the round-time simulations")
    parser.add_argument("--memory-rounds", type=int, default=12,
                        help="rounds of a light 100-client FedAvg run that tracks RSS per round (0 skips)")
    parser.add_argument("--throughput-images", type=int, default=600,
                        help="images of the one-core training-throughput measurement (0 skips it)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="run-config device of every run and of the bare loop (auto: CUDA if torch sees a GPU)")
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="client-resources-num-gpus of the main comparison's simulations (0 = none)")
    parser.add_argument("--gpu-fractions", default="0.1,0.25,0.5",
                        help="GPU per client for the GPU table (only on a GPU; '' skips it)")
    parser.add_argument("--seed-experiment", action="store_true",
                        help="on a GPU: also time configs/seed-repo.toml (50 rounds) end to end")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 10 clients, 2 rounds, small K")
    return parser


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _round_times(flower: LocalFlower, args: argparse.Namespace, base: dict[str, Any], out: Path,
                 report: dict[str, Any]) -> None:
    """The bare loop against ``flwr run`` with FedAvg and FedGMA (and, on a GPU, GPU sharing)."""
    progress(f"round time, {args.clients} clients, {args.rounds} rounds: bare loop")
    report["round_time"] = {"bare loop (fedavg)": bare(base | {"strategy": "fedavg"}, args.clients)}
    for strategy in ("fedavg", "fedgma"):
        progress(f"round time: flwr run simulation, {strategy}")
        report["round_time"][f"simulation ({strategy})"] = simulation(
            flower, base | {"strategy": strategy}, args.clients, out / f"run-{strategy}", args.cpus_per_client,
            args.gpus_per_client)
    floor = report["round_time"]["bare loop (fedavg)"]["median_round_s"]
    for entry in report["round_time"].values():
        entry["ratio_to_bare"] = entry["median_round_s"] / floor
    fractions = [float(f) for f in args.gpu_fractions.split(",") if f]
    if resolve_device(args.device).type == "cuda" and fractions:
        progress(f"GPU sharing, {fractions} GPU per client")
        report["gpu"] = gpu_sharing(flower, base | {"strategy": "fedavg"}, args.clients, fractions, out,
                                    args.cpus_per_client, floor)
        if args.seed_experiment:
            fastest = min(report["gpu"], key=lambda row: row["median_round_s"])["gpus_per_client"]
            progress(f"seed experiment end to end, {fastest} GPU per client")
            report["seed_experiment"] = seed_experiment(flower, base["data-dir"], out, device="cuda",
                                                        precision="fp32", gpus_per_client=fastest,
                                                        cpus_per_client=args.cpus_per_client)


def _aggregation(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Server aggregation time per strategy, as ratios to Flower's FedAvg and FedAdam measured beside them."""
    report["aggregation"] = measure_aggregation([int(k) for k in args.aggregation_k.split(",") if k], progress)


def _memory(flower: LocalFlower, args: argparse.Namespace, base: dict[str, Any], out: Path,
            report: dict[str, Any]) -> None:
    """The process tree's RSS at the end of every round of a longer, light simulation (FedAvg, one local epoch
    of at most 32 examples per client, at most 100 clients)."""
    if args.memory_rounds:
        progress(f"memory over {args.memory_rounds} rounds, {min(100, args.clients)} clients")
        light = base | {"strategy": "fedavg", "num-server-rounds": args.memory_rounds, "local-epochs": 1,
                        "max-client-examples": 32}
        report["memory"] = simulation(flower, light, min(100, args.clients), out / "memory")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.client_examples, args.test_examples = 10, 2, 30, 200
        args.aggregation_k, args.memory_rounds = "5,10", 3
        args.throughput_images = min(args.throughput_images, 60)
    resolve_device(args.device)  # a clear error now if cuda was asked for and is missing
    FLOWER_LOGGER.setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = {"data-dir": str(Path(args.data_dir).resolve()) if args.data_dir else "", "seed": 0,
            "num-server-rounds": args.rounds, "local-epochs": args.local_epochs, "batch-size": args.batch_size,
            "max-client-examples": args.client_examples, "max-test-examples": args.test_examples,
            "fraction-train": 1.0, "device": args.device}
    report: dict[str, Any] = {"command": shlex.join([Path(sys.executable).name, "-m", "fedgma.tools.bench",
                                                   *sys.argv[1:]]),
                              "machine": machine(), "versions": versions(), "config": base,
                              "clients": args.clients, "cpus_per_client": args.cpus_per_client,
                              "gpus_per_client": args.gpus_per_client, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.throughput_images:
        progress(f"training throughput per core against the matmul ceiling ({args.throughput_images} images)")
        report["throughput"] = throughput.measure(args.throughput_images, n=2048 if not args.quick else 512)
    with LocalFlower() as flower:
        _round_times(flower, args, base, out, report)
        _aggregation(args, report)
        _memory(flower, args, base, out, report)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print_tables(report)
    progress(f"report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
