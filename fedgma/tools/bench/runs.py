"""One measured run: the bare loop, or ``flwr run`` in an isolated local Flower, summarised per round."""

from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path
from typing import Any

from ..bare_loop import run_bare_loop
from ..local_flower import LocalFlower
from fedgma.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def round_summary(seconds: list[float]) -> dict[str, float]:
    """Median of the rounds after the first, and how much longer the first took."""
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {"median_round_s": steady, "first_round_extra_s": seconds[0] - steady, "rounds_s": seconds}


def bare(config: dict[str, Any], clients: int) -> dict[str, Any]:
    rows = run_bare_loop(Settings.from_run_config(config), clients)
    return round_summary([row["seconds"] for row in rows])


def simulation(flower: LocalFlower, config: dict[str, Any], clients: int, out: Path, cpus_per_client: int = 1,
               gpus_per_client: float = 0.0, app: Path = REPO, timeout: float = 1800,
               keep_output: bool = False) -> dict[str, Any]:
    """``flwr run`` of ``app`` on ``clients`` virtual clients (all of them available before round 1), memory
    sampled every 0.25 s; RuntimeError with the output's end if the run did not complete. ``keep_output``
    adds the run's console output (``output``)."""
    config = config | {"output-dir": str(out), "overwrite": True, "min-available-nodes": clients}
    run = flower.run(app, config, clients, cpus_per_client, sample_every=0.25, gpus_per_client=gpus_per_client,
                     timeout=timeout)
    status = flower.runs()[0]["status"]
    if status != "finished:completed":
        raise RuntimeError(f"flwr run did not complete ({status}):\n{run.output[-4000:]}")
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    summary = round_summary([row["seconds"] for row in rows if row["round"] > 0])
    return summary | {
        "launch_overhead_s": run.wall_seconds - sum(summary["rounds_s"]), "wall_s": run.wall_seconds,
        "peak_rss_bytes": run.peak_rss_bytes, "gpu_bytes_per_client": run.peak_gpu_bytes_per_process,
        "rss_at_round_end_bytes": [run.rss_at(row["time"]) for row in rows if row["round"] > 0],
        "final_ood_accuracy": rows[-1]["ood-accuracy"],
    } | ({"output": run.output} if keep_output else {})


def seed_experiment(flower: LocalFlower, data_dir: str, out: Path, device: str = "cpu", precision: str = "bf16",
                    gpus_per_client: float = 0.0, cpus_per_client: int = 1) -> dict[str, Any]:
    """``configs/seed-repo.toml`` end to end (100 clients, 50 rounds, FedGMA): wall time, rounds, accuracy."""
    config = tomllib.loads((REPO / "configs" / "seed-repo.toml").read_text()) | {
        "data-dir": data_dir, "device": device, "precision": precision}
    return {"gpus_per_client": gpus_per_client, "precision": precision, **simulation(
        flower, config, 100, out / "seed-experiment", cpus_per_client, gpus_per_client, timeout=5400)}
