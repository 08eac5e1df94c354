"""Cross-device scale: round time and peak memory against virtual clients and clients per round.

    python -m fedgma.tools.bench.scale --data-dir ../shared/data/mnist        # 30 to 60 minutes on 2 cores
    python -m fedgma.tools.bench.scale --data-dir ../shared/data/mnist --quick
    python -m fedgma.tools.bench.scale --data-dir ../shared/data/mnist --virtual "" --per-round-axis "" \
        --seed-experiment                                                     # part 3 alone (about 25 minutes)
    git worktree add /tmp/fedgma-before <commit>                              # an earlier version of this app,
    python -m fedgma.tools.bench.scale --data-dir ... --baseline-app /tmp/fedgma-before   # run beside this one

Light clients (at most 32 examples, one local full-batch epoch, FedAvg, central
evaluation on 1,000 + 1,000 test images), so the cost of the simulation itself
shows; reproducible sampling on (the app's default); the median of the rounds
after the first. Peak RSS is that of the whole process tree (local SuperLink, Ray,
client actors, the simulation process that runs the ServerApp).

1. **Virtual clients** V (100 to 100,000) at K clients per round (``fraction-train``
   K / V): does the round time stay flat in V? The first round's extra time holds
   the one-time cost of learning the sampling order.
2. **Clients per round** K (10 to 1,000, V = K): the bare loop (one process,
   clients one after another, then FedAvg) beside the simulation, the simulation's
   cost per client beyond the bare loop's ((sim - bare) / K), and peak RSS.

3. With ``--seed-experiment``: the seed repository's experiment end to end
   (``configs/seed-repo.toml``: 100 clients, 50 rounds, FedGMA) in bf16, beside its
   compute floor: one client's local training timed on one core
   (:mod:`.throughput`), times 100 clients, over the machine's cores.

With ``--baseline-app`` every simulation of part 1 (up to ``--baseline-max-virtual``
clients) and part 2 runs a second time on another checkout of this app, right
after this one's, so before and after are measured side by side on the same machine.
Writes ``report.json`` and ``scale.png`` to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from flwr.common.logger import FLOWER_LOGGER

from fedgma.machine import machine
from fedgma.outputs import versions

from ..local_flower import LocalFlower
from . import throughput
from .runs import REPO, bare, seed_experiment, simulation

#: How the app logs the one-time cost of reading the simulation's registration order.
ORDER_READ = re.compile(r"(\d+) simulated nodes in registration \(partition\) order, read in ([\d.]+) s")


def progress(text: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {text}", flush=True)


def light(args: argparse.Namespace) -> dict[str, Any]:
    return {"data-dir": str(Path(args.data_dir).resolve()) if args.data_dir else "", "seed": 0,
            "strategy": args.strategy, "num-server-rounds": args.rounds, "local-epochs": 1, "batch-size": 0,
            "max-client-examples": 32, "max-test-examples": 1000}


def measured(flower: LocalFlower, config: dict[str, Any], virtual: int, out: Path, app: Path,
             timeout: float) -> dict[str, Any]:
    """One simulation, or what stopped it (``error``: the run did not finish within ``timeout`` or failed)."""
    try:
        run = simulation(flower, config, virtual, out, app=app, timeout=timeout, keep_output=True)
    except RuntimeError as problem:
        return {"error": str(problem).splitlines()[0], "tail": str(problem)[-2000:]}
    read = ORDER_READ.search(run.pop("output"))
    return run | ({"order_read_s": float(read.group(2))} if read else {})


def virtual_clients(flower: LocalFlower, args: argparse.Namespace, out: Path, apps: dict[str, Path],
                    report: dict[str, Any]) -> None:
    report["virtual"] = []
    for virtual in (int(v) for v in args.virtual.split(",") if v):
        config = light(args) | {"fraction-train": min(1.0, args.per_round / virtual)}
        row: dict[str, Any] = {"virtual": virtual, "per_round": min(args.per_round, virtual)}
        for name, app in apps.items():
            if name != "this" and virtual > args.baseline_max_virtual:
                continue
            progress(f"{virtual} virtual clients, {row['per_round']} per round: {name}")
            row[name] = measured(flower, config, virtual, out / f"virtual-{virtual}-{name}", app, args.timeout)
            progress(f"  {summary(row[name])}")
        report["virtual"].append(row)


def clients_per_round(flower: LocalFlower, args: argparse.Namespace, out: Path, apps: dict[str, Path],
                      report: dict[str, Any]) -> None:
    report["per_round"] = []
    for k in (int(k) for k in args.per_round_axis.split(",") if k):
        progress(f"{k} clients per round: bare loop")
        row: dict[str, Any] = {"clients": k, "bare": bare(light(args) | {"fraction-train": 1.0}, k)}
        for name, app in apps.items():
            progress(f"{k} clients per round: {name}")
            run = measured(flower, light(args) | {"fraction-train": 1.0}, k, out / f"per-round-{k}-{name}", app,
                           args.timeout)
            if "error" not in run:
                run["overhead_per_client_s"] = (run["median_round_s"] - row["bare"]["median_round_s"]) / k
            row[name] = run
            progress(f"  {summary(run)}")
        report["per_round"].append(row)


def seed_run(flower: LocalFlower, args: argparse.Namespace, out: Path, report: dict[str, Any]) -> None:
    progress("seed experiment: one client's local training on one core (600 images, 3 full-batch steps)")
    speed = throughput.measure(600)
    client_s = speed["train_gflop"] / speed["train_bf16_gflops"]
    progress("seed experiment: configs/seed-repo.toml end to end in bf16 (100 clients, 50 rounds)")
    run = seed_experiment(flower, light(args)["data-dir"], out, precision="bf16")
    cores = report["machine"]["cores"]
    report["seed_experiment"] = run | {"client_train_s": client_s, "floor_round_s": 100 * client_s / cores,
                                       "throughput": speed}


def summary(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"stopped: {run['error']}"
    return (f"{run['median_round_s']:.2f} s per round (first round +{run['first_round_extra_s']:.1f} s), "
            f"peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB")


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB; {report['command']}")
    apps = report["apps"]
    print("\nRound time against virtual clients (s per round, median after the first; first round extra; peak RSS)")
    for row in report["virtual"]:
        cells = [f"{name}: {summary(row[name])}" for name in apps if name in row]
        print(f"{row['virtual']:>7} virtual, {row['per_round']:>4} per round | " + " | ".join(cells))
    print("\nRound time against clients per round (bare loop beside the simulation)")
    for row in report["per_round"]:
        cells = [f"{name}: {summary(row[name])}"
                 + (f", +{row[name]['overhead_per_client_s'] * 1e3:.1f} ms per client over the bare loop"
                    if "overhead_per_client_s" in row[name] else "") for name in apps if name in row]
        print(f"{row['clients']:>5} per round | bare {row['bare']['median_round_s']:.2f} s | " + " | ".join(cells))
    if "seed_experiment" in report:
        e = report["seed_experiment"]
        print(f"\nSeed experiment (configs/seed-repo.toml, bf16): {e['wall_s'] / 60:.1f} min end to end, "
              f"{e['median_round_s']:.1f} s per round (first round +{e['first_round_extra_s']:.1f} s, launch "
              f"{e['launch_overhead_s']:.0f} s); compute floor {e['floor_round_s']:.1f} s per round "
              f"(one client {e['client_train_s']:.2f} s on one core, x 100 / {m['cores']} cores), "
              f"{50 * e['floor_round_s'] / 60:.1f} min for 50 rounds; final OOD accuracy {e['final_ood_accuracy']:.4f}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_v, time_k, memory) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in report["apps"]:
        rows = [r for r in report["virtual"] if name in r and "error" not in r[name]]
        time_v.plot([r["virtual"] for r in rows], [r[name]["median_round_s"] for r in rows], "o-", label=name)
        rows = [r for r in report["per_round"] if name in r and "error" not in r[name]]
        time_k.plot([r["clients"] for r in rows], [r[name]["median_round_s"] for r in rows], "o-", label=name)
        memory.plot([r["clients"] for r in rows], [r[name]["peak_rss_bytes"] / 1e9 for r in rows], "o-", label=name)
    rows = report["per_round"]
    time_k.plot([r["clients"] for r in rows], [r["bare"]["median_round_s"] for r in rows], "s--", label="bare loop")
    per_round = report["virtual"][0]["per_round"] if report["virtual"] else 0
    for axis, title, ylabel in ((time_v, f"{per_round} clients per round", "seconds per round"),
                                (time_k, "every virtual client each round", "seconds per round"),
                                (memory, "peak RSS, whole process tree", "GB")):
        axis.set_xscale("log")
        axis.set_title(title)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
    time_v.set_xlabel("virtual clients")
    time_k.set_xlabel("clients per round")
    memory.set_xlabel("clients per round")
    m = report["machine"]
    figure.suptitle(f"{m['cpu']}, {m['cores']} cores; light clients (32 examples, 1 epoch), {report['strategy']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="", help="folder with the four MNIST IDX .gz files ('' = torchvision)")
    parser.add_argument("--out", default="bench-scale", help="folder for report.json and scale.png")
    parser.add_argument("--virtual", default="100,1000,10000,100000", help="virtual clients of part 1")
    parser.add_argument("--per-round", type=int, default=100, help="clients per round in part 1")
    parser.add_argument("--per-round-axis", default="10,100,1000", help="clients per round of part 2")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (the first is set apart)")
    parser.add_argument("--strategy", default="fedavg", help="run-config strategy of every run")
    parser.add_argument("--baseline-app", default="", help="another checkout of this app to run beside this one")
    parser.add_argument("--baseline-max-virtual", type=int, default=10_000,
                        help="the baseline runs part 1 up to this many virtual clients")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take before it is stopped")
    parser.add_argument("--seed-experiment", action="store_true",
                        help="also time configs/seed-repo.toml end to end in bf16 (about 25 minutes on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 and 200 virtual clients, 2 rounds")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.quick:
        args.virtual, args.per_round, args.per_round_axis, args.rounds = "20,200", 10, "5,20", 2
    FLOWER_LOGGER.setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    apps = {"this": REPO} | ({"baseline": Path(args.baseline_app).resolve()} if args.baseline_app else {})
    report: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, "-m", "fedgma.tools.bench.scale", *sys.argv[1:]]),
        "machine": machine(), "versions": versions(), "strategy": args.strategy, "rounds": args.rounds,
        "apps": {name: str(app) for name, app in apps.items()}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with LocalFlower() as flower:
        virtual_clients(flower, args, out, apps, report)
        clients_per_round(flower, args, out, apps, report)
        if args.seed_experiment:
            seed_run(flower, args, out, report)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if report["virtual"] or report["per_round"]:
        plot(report, out / "scale.png")
    print_report(report)
    progress(f"report: {out / 'report.json'}, plot: {out / 'scale.png'}")


if __name__ == "__main__":
    main()
