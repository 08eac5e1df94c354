"""Flower ServerApp: validated settings, centralised OOD/ID evaluation, outputs and a checkpoint every round.

The round loop is Flower's own ``Strategy.start``; this module only supplies the
strategy (from the registry), the initial model (or a checkpoint's, with
``resume=true``), and an ``evaluate_fn`` that tests the global model on the OOD
and in-distribution test sets after every round (round 0 included), prints one
progress line, persists the round and replaces the checkpoint.

A resumed run calls ``Strategy.start`` for the remaining rounds only; the
strategy's ``round_offset`` maps Flower's round numbers (which start at 1 again,
so Flower's own "[ROUND k/N]" lines, shown with ``verbose=true``, count the rounds
of this invocation) to the run's, which this app's "[round t/T]" lines show.
"""

from __future__ import annotations

import time
from logging import INFO

import torch
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedgma.strategies import ReplyGuard

from .console import quiet_flower_rounds
from .checkpoint import CHECKPOINT, check_model_arrays, check_resumable, load_checkpoint, set_random_states
from .evaluation import CentralEvaluation
from .model import build_model
from .outputs import RunRecorder, resolve_output_dir
from .beside import draw, next_command, partner_report, summary
from .registry import build_strategy
from .settings import ConfigError, Settings
from .machine import resolve_device
from .training import prepare_model

app = ServerApp()


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
        checkpoint.round + 1, settings.num_server_rounds)
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
    partner = partner_report(settings)  # before round 1: a baseline's partner run must exist and match
    recorder, initial, strategy = _start(settings)
    log(INFO, "FedGMA app: strategy %s%s, %d rounds; outputs in %s", settings.strategy,
        " + GMA" if settings.gma else "", settings.num_server_rounds, recorder.folder)
    model = prepare_model(build_model(settings.task), device)
    try:
        evaluate_fn = CentralEvaluation(settings, model, strategy, recorder, checkpoint_state=strategy.state,
                                        round_offset=strategy.round_offset)
        with quiet_flower_rounds(settings.verbose):
            strategy.start(grid=grid, initial_arrays=initial,
                           num_rounds=settings.num_server_rounds - strategy.round_offset,
                           timeout=settings.round_timeout, evaluate_fn=evaluate_fn)
    except BaseException as problem:
        recorder.set_status(recorder.end_status(problem))
        raise
    untrained = strategy.untrained()
    recorder.finish(evaluate_fn.latest.to_torch_state_dict(), "completed" if untrained is None else f"failed: {untrained}")
    if untrained is not None:  # Flower marks the run failed, so `flwr list` and the runner see it
        raise RuntimeError(untrained)
    log(INFO, "Run finished; metrics.json, metrics.csv, model.pt and accuracy.png are in %s", recorder.folder)
    if partner is not None:
        draw(settings, recorder.rows, partner, recorder.folder / "beside.png")
        for line in summary(settings, recorder.rows, partner):
            log(INFO, "%s", line)
        log(INFO, "Figure: %s", recorder.folder / "beside.png")
    if next_command(settings):
        log(INFO, "Next, its baseline on the same seed and data (then both side by side in one figure):\n%s",
            next_command(settings))
