"""Run a grid of simulations one after another through ``flwr run``, resumably.

Each run writes into ``<results>/<grid>/<run name>/``. Running a grid again
skips the runs whose ``metrics.json`` says ``completed`` with every round, and
continues an interrupted run from its last round checkpoint (``resume=true``);
a run without a checkpoint starts again from round 0. A new run whose
configuration, seed and federation size equal a completed run of another grid
(the sweep grids share their baseline runs) is not run again: that run's
``metrics.json`` and ``metrics.csv`` are copied, with ``reused-from`` naming it;
runs are deterministic (docs/reliability.md), so the
copy is what the run would have written. Progress over runs and rounds goes to
stdout, one line per round, and after each run the runs done of the grid's total
and the time left at the mean pace of the runs made so far.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgma.checkpoint import CHECKPOINT
from fedgma.console import time_left
from fedgma.settings import Settings

from ..local_flower import LocalFlower
from .grid import REPO, Grid, Run
from .results import RunResult, configuration_of, load_runs

NEW, COMPLETED, INTERRUPTED, EXTEND = "new", "completed", "interrupted", "extend"
REUSED = "reused"  # the status of a run copied from an identical completed run


@dataclass
class Outcome:
    run: Run
    state: str  # what the runner found before running
    status: str  # metrics.json status afterwards ("skipped" if nothing ran)
    seconds: float


def run_state(folder: Path, num_rounds: int) -> str:
    """``new``, ``completed`` (every round done), ``extend`` (completed with fewer rounds) or ``interrupted``."""
    try:
        report = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return NEW
    done = report["rounds"][-1]["round"] if report.get("rounds") else -1
    if report.get("status") == "completed":
        return COMPLETED if done >= num_rounds else EXTEND
    return INTERRUPTED


def run_config_for(run: Run, folder: Path, data_dir: str, state: str) -> dict[str, Any]:
    """The run's configuration plus where it reads and writes, and whether it resumes."""
    config = run.config | {"output-dir": str(folder)}
    if data_dir:
        config["data-dir"] = data_dir
    if state in (INTERRUPTED, EXTEND) and (folder / CHECKPOINT).exists():
        config["resume"] = True
    return config


def same_run(run: Run, results: Path) -> RunResult | None:
    """A completed, not itself copied, run under ``results`` with ``run``'s configuration, seed and clients."""
    wanted = configuration_of(Settings.from_run_config(run.config).to_run_config(), with_seed=True)
    return next((other for other in load_runs([results]) if "reused-from" not in other.report
                 and other.report.get("num-clients") == run.supernodes
                 and configuration_of(other.config, with_seed=True) == wanted), None)


def copy_run(source: RunResult, folder: Path, results: Path) -> str:
    """Copy ``source``'s metrics into ``folder``, marked with where they come from; returns that name."""
    origin = source.folder.relative_to(results).as_posix()
    folder.mkdir(parents=True, exist_ok=True)
    if (source.folder / "metrics.csv").exists():
        shutil.copyfile(source.folder / "metrics.csv", folder / "metrics.csv")
    (folder / "metrics.json").write_text(json.dumps(source.report | {"reused-from": origin}, indent=2))
    return origin


def run_grid(grid: Grid, results: Path, data_dir: str = "", only: str = "", app_dir: Path = REPO,
             timeout: float = 6 * 3600, flower: LocalFlower | None = None, reuse: bool = True,
             retries: int = 1) -> list[Outcome]:
    """Run every run of ``grid`` whose name contains ``only``; skip finished ones, copy identical ones.

    A run that stops before its last round but left a checkpoint (its Flower run failed: on these machines
    one did at round 33 of 50, with no error in its output, in the minute the VM stalled) is resumed from that
    checkpoint up to ``retries`` times before the grid moves on, so one hiccup does not leave a hole."""
    runs = [run for run in grid.runs if only in run.name]
    outcomes: list[Outcome] = []
    owned = flower is None
    flower = flower or LocalFlower()
    try:
        for index, run in enumerate(runs, 1):
            folder = results / grid.name / run.name
            num_rounds = int(run.config.get("num-server-rounds", 15))
            state = run_state(folder, num_rounds)
            tag = f"[run {index}/{len(runs)} {run.name}]"
            if state == COMPLETED:
                print(f"{tag} already completed, skipped", flush=True)
                outcomes.append(Outcome(run, state, "skipped", 0.0))
                continue
            if state == NEW and reuse and (source := same_run(run, results)):
                origin = copy_run(source, folder, results)
                print(f"{tag} same configuration, seed and clients as {origin} (completed): "
                      "its metrics copied, not run again", flush=True)
                outcomes.append(Outcome(run, state, REUSED, 0.0))
                continue
            start, found = time.perf_counter(), state
            for attempt in range(retries + 1):
                if attempt:
                    print(f"{tag} stopped before its last round; resuming from its checkpoint "
                          f"(retry {attempt} of {retries})", flush=True)
                status = _run_once(flower, app_dir, run, folder, data_dir, state, tag, timeout)
                state = run_state(folder, num_rounds)
                if state != INTERRUPTED or not (folder / CHECKPOINT).exists():  # done, or nothing to resume
                    break
            outcomes.append(Outcome(run, found, status, time.perf_counter() - start))
            ran = [o.seconds for o in outcomes if o.seconds > 0]  # not the skipped and copied ones
            print(f"{tag} {status} in {outcomes[-1].seconds / 60:.1f} min; {index} of {len(runs)} runs done, "
                  f"{time_left(sum(ran), len(ran), len(runs) - index)} left at this pace", flush=True)
    finally:
        if owned:
            flower.close()
    return outcomes


def _run_once(flower: LocalFlower, app_dir: Path, run: Run, folder: Path, data_dir: str, state: str,
              tag: str, timeout: float) -> str:
    """One ``flwr run`` of ``run`` (resumed when ``state`` and a checkpoint allow); its final status."""
    config = run_config_for(run, folder, data_dir, state)
    if state in (INTERRUPTED, EXTEND) and not config.get("resume"):
        print(f"{tag} {state} without a checkpoint: starting again from round 0", flush=True)
        shutil.rmtree(folder)
    print(f"{tag} {'resuming' if config.get('resume') else 'starting'} ({run.supernodes} clients)", flush=True)
    done = flower.run(app_dir, config, run.supernodes, run.cpus_per_client, timeout=timeout,
                      on_line=lambda line: _progress(tag, line))
    status = _final_status(folder)
    if status != "completed":
        print(f"{tag} {status}; flwr exited with code {done.returncode}; its last output:\n"
              f"{done.output[-3000:]}", file=sys.stderr, flush=True)
    return status


def _progress(tag: str, line: str) -> None:
    """Echo the app's per-round lines, resume notes and Flower's errors."""
    for marker in ("[round ", "Resum", "ERROR"):
        if marker in line:
            print(f"{tag} {line[line.index(marker):]}", flush=True)
            return


def _final_status(folder: Path) -> str:
    try:
        return json.loads((folder / "metrics.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "failed: no metrics.json (see the output above)"


def stop_on_sigterm() -> None:
    """A terminated runner still stops the Flower processes it started (``finally`` runs)."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
