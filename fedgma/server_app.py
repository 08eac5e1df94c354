"""Flower ServerApp: validated settings, centralised OOD/ID evaluation, outputs and a checkpoint every round.

The round loop is Flower's own ``Strategy.start``; this module only supplies the
strategy (from the registry), the initial model (or a checkpoint's, with
``resume=true``), and an ``evaluate_fn`` that tests the global model on the OOD
and in-distribution test sets after every round (round 0 included), prints one
progress line, persists the round and replaces the checkpoint.

A resumed run calls ``Strategy.start`` for the remaining rounds only; the
strategy's ``round_offset`` maps Flower's round numbers (which start at 1 again,
so Flower's own "[ROUND k/N]" lines count the rounds of this invocation) to the
run's, which this app's "[round t/T]" lines show.
"""

from __future__ import annotations

import time
from logging import INFO

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .checkpoint import (CHECKPOINT, Checkpoint, check_model_arrays, check_resumable, load_checkpoint, random_states,
                         save_checkpoint, set_random_states)
from .data import test_sets
from .model import build_model
from .outputs import RoundTimer, RunRecorder, resolve_output_dir
from .records import decode
from .settings import ConfigError, Settings
from .strategies import ReplyGuard, build_strategy
from .training import evaluate, prepare_model, resolve_device

app = ServerApp()


class CentralEvaluation:
    """``evaluate_fn`` for ``Strategy.start``: test, log one line, record the round, checkpoint."""

    def __init__(self, settings: Settings, model: torch.nn.Module, strategy: ReplyGuard,
                 recorder: RunRecorder) -> None:
        self.settings = settings
        self.model = model
        self.strategy = strategy
        self.recorder = recorder
        self.test_sets = test_sets(settings)
        self.timer = RoundTimer()
        self.latest: ArrayRecord | None = None  # the newest global model (model.pt at the end)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round += self.strategy.round_offset
        self.latest = arrays
        if self.recorder.rows and server_round <= self.recorder.rows[-1]["round"]:
            return None  # a resumed run's starting point: evaluated and recorded before the interruption
        seconds = self.timer.lap()
        self.model.load_state_dict(arrays.to_torch_state_dict())
        metrics = {}
        for name, data in self.test_sets.items():
            metrics[f"{name}-loss"], metrics[f"{name}-accuracy"] = evaluate(self.model, data,
                                                                            precision=self.settings.precision)
        row = {"round": server_round, **metrics, "seconds": round(seconds, 3), "time": round(time.time(), 3),
               **self.strategy.train_metrics.get(server_round, {}),
               **self.strategy.evaluate_metrics.get(server_round, {}),
               **self.strategy.notes.get(server_round, {})}
        self.recorder.record_round(row)
        started = time.perf_counter()
        size = save_checkpoint(self.recorder.folder, Checkpoint(
            server_round, decode(arrays), self.strategy.state(), self.recorder.rows, self.settings.to_run_config(),
            self.recorder.summary(), random_states()))
        log(INFO, "[round %d/%d] OOD acc %.4f | ID acc %.4f | train loss %s | mask density %s | "
                  "replies %s ok, %s failed, %s rejected | %.1f s | checkpoint %.1f MB in %.2f s", server_round,
            self.settings.num_rounds, row["ood-accuracy"], row["id-accuracy"], _fmt(row.get("train-loss")),
            _fmt(row.get("mask-density")), row.get("replies-accepted", "-"), row.get("replies-failed", "-"),
            row.get("replies-rejected", "-"), seconds, size / 1e6, time.perf_counter() - started)
        return MetricRecord(metrics)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _start(settings: Settings) -> tuple[RunRecorder, ArrayRecord, ReplyGuard]:
    """The recorder, the initial global model and the strategy: fresh, or from the checkpoint."""
    strategy = build_strategy(settings)
    model = build_model(settings.task, seed=settings.seed)
    if not settings.resume:
        return RunRecorder(resolve_output_dir(settings), settings), ArrayRecord(model.state_dict()), strategy
    if not settings.output_dir:
        raise ConfigError("Run-config key 'resume' is true but 'output-dir' is empty: name the folder of the run "
                          "to continue.")
    folder = resolve_output_dir(settings)
    checkpoint = load_checkpoint(folder)
    check_resumable(checkpoint, settings)
    check_model_arrays(checkpoint, model.state_dict(), folder / CHECKPOINT)
    try:
        strategy.restore(checkpoint.strategy_state, round_offset=checkpoint.round)
        set_random_states(checkpoint.random_states)
    except (ValueError, TypeError, KeyError, RuntimeError) as problem:
        raise ConfigError(f"Run-config key 'resume': the checkpoint {folder / CHECKPOINT} does not fit this run's "
                          f"strategy or random generators ({problem}); start the run again in a new "
                          "'output-dir'.") from problem
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in checkpoint.arrays.items()})
    log(INFO, "Resumed from the checkpoint of round %d in %s; rounds %d to %d remain.", checkpoint.round, folder,
        checkpoint.round + 1, settings.num_rounds)
    recorder = RunRecorder(folder, settings, rows=checkpoint.rows, report=checkpoint.report)
    return recorder, ArrayRecord(model.state_dict()), strategy


#: How long a simulation may take to register its virtual clients (they appear within seconds).
SIMULATION_NODE_WAIT = 60.0


def wait_for_clients(grid: Grid, needed: int, timeout: float, poll: float = 1.0) -> int:
    """Wait until ``needed`` clients are connected; ConfigError naming 'min-available-nodes' when they are not.

    Flower's own sampling waits for ``min_available_nodes`` forever. In simulation (Flower's in-memory grid)
    the federation is fixed, so a run that asks for more clients than it has stops within a minute; in a
    deployment clients may still be starting, so the wait is the round timeout.
    """
    simulation = type(grid).__name__ == "InMemoryGrid"
    deadline = time.monotonic() + (min(timeout, SIMULATION_NODE_WAIT) if simulation else timeout)
    reported = time.monotonic()
    while (connected := len(list(grid.get_node_ids()))) < needed:
        if time.monotonic() > deadline:
            raise ConfigError(f"Run-config key 'min-available-nodes' is {needed}, but only {connected} clients "
                              + ("are in this simulation (num-supernodes)" if simulation else
                                 f"connected within round-timeout ({timeout:g} s)") + "; lower it or add clients.")
        if time.monotonic() - reported > 30:
            log(INFO, "Waiting for clients: %d of min-available-nodes=%d connected", connected, needed)
            reported = time.monotonic()
        time.sleep(poll)
    return connected


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_run_config(context.run_config)
    device = resolve_device(settings.device)
    wait_for_clients(grid, settings.min_available_nodes, settings.round_timeout)
    recorder, initial, strategy = _start(settings)
    log(INFO, "FedGMA app: strategy %s%s, %d rounds; outputs in %s", settings.strategy,
        " + GMA" if settings.gma else "", settings.num_rounds, recorder.folder)
    model = prepare_model(build_model(settings.task), device)
    try:
        evaluate_fn = CentralEvaluation(settings, model, strategy, recorder)
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=settings.num_rounds - strategy.round_offset,
                       timeout=settings.round_timeout, evaluate_fn=evaluate_fn)
    except BaseException as problem:
        recorder.set_status(f"failed: {type(problem).__name__}: {problem}")
        raise
    recorder.finish(evaluate_fn.latest.to_torch_state_dict())
    log(INFO, "Run finished; metrics.json, metrics.csv, model.pt and accuracy.png are in %s", recorder.folder)
