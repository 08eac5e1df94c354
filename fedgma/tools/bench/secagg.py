"""Benchmark: the legacy app with and without SecAgg+ (``secagg``), side by side in one run.

    python -m fedgma.tools.bench.secagg --data-dir ../shared/data/mnist --out docs/secagg/bench

For FedGMA (gradient direction, its mask acting), GMA over FedAvg and plain FedAvg,
each run twice from the same seed, plain and with ``secagg=true`` (the pairs
alternate, so a slower stretch of the machine hits both): the median round time
after the first round, the bytes per client and round each way (every message of
the round, SecAgg+'s four stages included, serialized as Flower sends it), and
how far the model after round 1 is from the plain run's (both start from the same
model and the clients train identically in round 1, so the difference is SecAgg+'s
quantization) against :meth:`~fedgma.strategies.secagg.SecAggPlus.error_bound`.
The measuring server app (``server`` below) is the legacy app's, on a grid that
counts bytes. Writes ``report.json`` to ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import parameters_to_ndarrays
from flwr.common.serde import recorddict_to_proto
from flwr.server import ServerApp
from flwr.serverapp import Grid

from fedgma.legacy.app import legacy_run, secagg_settings
from fedgma.machine import machine
from fedgma.outputs import versions
from fedgma.settings import Settings

from ..local_flower import LocalFlower

REPO = Path(__file__).resolve().parents[3]
METHODS = {"fedgma": {"strategy": "fedgma", "p": 0.3, "server-lr": 1.0},
           "gma": {"strategy": "fedavg", "gma": True, "tau": 0.5},
           "fedavg": {"strategy": "fedavg"}}


def content_bytes(message) -> int:
    """The serialized size of a message's content, as Flower puts it on the wire."""
    return recorddict_to_proto(message.content).ByteSize() if message.has_content() else 0


class CountingGrid:
    """A Grid that counts the bytes of every message sent and received, by round (``group_id``)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.replies: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for message in messages:
            group = message.metadata.group_id
            self.sent[group] = self.sent.get(group, 0) + content_bytes(message)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            group = reply.metadata.group_id
            self.received[group] = self.received.get(group, 0) + content_bytes(reply)
            self.replies[group] = self.replies.get(group, 0) + 1
        return replies


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    """The legacy app on a counting grid; writes ``bytes.json`` and the round-1 model beside metrics.json."""
    legacy_context, workflow = legacy_run(context)
    out = Path(Settings.from_run_config(context.run_config).output_dir)
    strategy = legacy_context.strategy
    evaluate = strategy.evaluate

    def evaluate_and_keep_round_one(server_round, parameters):
        if server_round == 1:
            np.savez(out / "round1.npz", *parameters_to_ndarrays(parameters))
        return evaluate(server_round, parameters)

    strategy.evaluate = evaluate_and_keep_round_one
    counting = CountingGrid(grid)
    workflow(counting, legacy_context)
    (out / "bytes.json").write_text(json.dumps({"sent": counting.sent, "received": counting.received,
                                                "replies": counting.replies}))


def bench_app(folder: Path) -> Path:
    """An app folder: the legacy example's config, with this module's measuring server app."""
    pyproject = (REPO / "examples" / "legacy" / "pyproject.toml").read_text()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(pyproject.replace('"fedgma.legacy.app:server"',
                                                             '"fedgma.tools.bench.secagg:server"')
                                           .replace('name = "fedgma-legacy"', 'name = "fedgma-bench-secagg"'))
    return folder


def one_run(flower: LocalFlower, app: Path, config: dict[str, Any], clients: int, out: Path) -> dict[str, Any]:
    run = flower.run(app, config | {"output-dir": str(out), "overwrite": True}, clients)
    status = flower.runs()[0]["status"]
    if status != "finished:completed":
        raise RuntimeError(f"flwr run did not complete ({status}):\n{run.output[-4000:]}")
    rows = [row for row in json.loads((out / "metrics.json").read_text())["rounds"] if row["round"] > 0]
    counted = json.loads((out / "bytes.json").read_text())
    rounds = [str(row["round"]) for row in rows]
    return {"median_round_s": statistics.median(row["seconds"] for row in rows[1:] or rows),
            "round_s": [row["seconds"] for row in rows],
            "upload_bytes_per_client_round": statistics.mean(counted["received"][r] / clients for r in rounds),
            "download_bytes_per_client_round": statistics.mean(counted["sent"][r] / clients for r in rounds),
            "messages_per_client_round": statistics.mean(counted["replies"][r] / clients for r in rounds),
            "replies_accepted": [row.get("replies-accepted") for row in rows],
            "mask_density_round1": rows[0].get("mask-density"),
            "final_ood_accuracy": rows[-1]["ood-accuracy"],
            "round1": [np.asarray(a) for a in np.load(out / "round1.npz").values()]}


def compare(flower: LocalFlower, app: Path, config: dict[str, Any], clients: int, out: Path) -> dict[str, Any]:
    """One method plain and with SecAgg+, and what differs."""
    plain = one_run(flower, app, config | {"secagg": False}, clients, out / "plain")
    secure = one_run(flower, app, config | {"secagg": True}, clients, out / "secagg")
    settings = Settings.from_run_config(config | {"secagg": True})
    total = clients * settings.max_client_examples if settings.max_client_examples else float("nan")
    deviation = max(float(np.max(np.abs(a - b))) for a, b in zip(plain.pop("round1"), secure.pop("round1")))
    return {"plain": plain, "secagg": secure, "round1_max_abs_deviation": deviation,
            "error_bound_per_mean": secagg_settings(settings).error_bound(clients, total),
            # FedGMA's step w_bar - eta_s m g_bar carries the error of two means; GMA's w_t + m (w_bar - w_t) one
            "round1_error_bound": secagg_settings(settings).error_bound(clients, total) * (
                1 + settings.server_lr if settings.strategy == "fedgma" and settings.fedgma_direction == "gradient"
                else 1),
            "round_time_ratio": secure["median_round_s"] / plain["median_round_s"],
            "upload_ratio": secure["upload_bytes_per_client_round"] / plain["upload_bytes_per_client_round"]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="", help="folder with the four MNIST IDX .gz files ('' = torchvision)")
    parser.add_argument("--out", default="bench-results/secagg", help="folder for report.json")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (the first is set apart)")
    parser.add_argument("--client-examples", type=int, default=1000, help="examples per client")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"some of {', '.join(METHODS)}")
    return parser


def main_cli(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out).resolve()
    base = tomllib.loads((REPO / "examples" / "legacy" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    base |= {"data-dir": args.data_dir, "num-server-rounds": args.rounds, "max-client-examples": args.client_examples,
             "max-test-examples": 1000, "min-available-nodes": args.clients,
             "secagg-max-weight": float(args.client_examples)}
    report: dict[str, Any] = {"machine": machine(), "versions": versions(), "clients": args.clients,
                              "rounds": args.rounds, "client_examples": args.client_examples, "methods": {}}
    with tempfile.TemporaryDirectory() as scratch, LocalFlower() as flower:
        app = bench_app(Path(scratch) / "app")
        for name in args.methods.split(","):
            print(f"[bench secagg] {name}: plain, then secagg=true ({args.clients} clients, {args.rounds} rounds)",
                  flush=True)
            report["methods"][name] = compare(flower, app, base | METHODS[name], args.clients, out / name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"{'method':8} {'round s plain':>13} {'secagg':>8} {'ratio':>6} {'up B/client plain':>18} {'secagg':>10} "
          f"{'ratio':>6} {'round-1 dev':>11} {'bound':>9}")
    for name, row in report["methods"].items():
        print(f"{name:8} {row['plain']['median_round_s']:13.2f} {row['secagg']['median_round_s']:8.2f} "
              f"{row['round_time_ratio']:6.2f} {row['plain']['upload_bytes_per_client_round']:18,.0f} "
              f"{row['secagg']['upload_bytes_per_client_round']:10,.0f} {row['upload_ratio']:6.2f} "
              f"{row['round1_max_abs_deviation']:11.2e} {row['round1_error_bound']:9.2e}")
    print(f"report: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
