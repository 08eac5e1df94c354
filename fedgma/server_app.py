"""Flower ServerApp: validated settings, centralised OOD/ID evaluation, outputs every round.

The round loop is Flower's own ``Strategy.start``; this module only supplies the
strategy (from the registry), the initial model, and an ``evaluate_fn`` that tests
the global model on the OOD and in-distribution test sets after every round
(round 0 included), prints one progress line and persists the round.
"""

from __future__ import annotations

import time
from logging import INFO

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .data import num_classes, test_sets
from .model import build_model
from .outputs import RoundTimer, RunRecorder, resolve_output_dir
from .settings import Settings
from .strategies import ReplyGuard, build_strategy
from .training import evaluate, prepare_model

app = ServerApp()


class CentralEvaluation:
    """``evaluate_fn`` for ``Strategy.start``: test, log one line, record the round."""

    def __init__(self, settings: Settings, model: torch.nn.Module, strategy: ReplyGuard,
                 recorder: RunRecorder) -> None:
        self.settings = settings
        self.model = model
        self.strategy = strategy
        self.recorder = recorder
        self.test_sets = test_sets(settings)
        self.timer = RoundTimer()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        seconds = self.timer.lap()
        self.model.load_state_dict(arrays.to_torch_state_dict())
        metrics = {}
        for name, data in self.test_sets.items():
            metrics[f"{name}-loss"], metrics[f"{name}-accuracy"] = evaluate(self.model, data,
                                                                            precision=self.settings.precision)
        row = {"round": server_round, **metrics, "seconds": round(seconds, 3), "time": round(time.time(), 3),
               **self.strategy.train_metrics.get(server_round, {}),
               **self.strategy.evaluate_metrics.get(server_round, {})}
        self.recorder.record_round(row)
        log(INFO, "[round %d/%d] OOD acc %.4f | ID acc %.4f | train loss %s | mask density %s | "
                  "replies %s ok, %s failed, %s rejected | %.1f s", server_round, self.settings.num_rounds,
            row["ood-accuracy"], row["id-accuracy"], _fmt(row.get("train-loss")), _fmt(row.get("mask-density")),
            row.get("replies-accepted", "-"), row.get("replies-failed", "-"), row.get("replies-rejected", "-"),
            seconds)
        return MetricRecord(metrics)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_run_config(context.run_config)
    recorder = RunRecorder(resolve_output_dir(settings), settings)
    log(INFO, "FedGMA app: strategy %s%s, %d rounds; outputs in %s", settings.strategy,
        " + GMA" if settings.gma else "", settings.num_rounds, recorder.folder)
    model = prepare_model(build_model(num_classes(settings.task), seed=settings.seed))
    strategy = build_strategy(settings)
    try:
        evaluate_fn = CentralEvaluation(settings, model, strategy, recorder)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                num_rounds=settings.num_rounds, timeout=settings.round_timeout,
                                evaluate_fn=evaluate_fn)
    except BaseException as problem:
        recorder.set_status(f"failed: {type(problem).__name__}: {problem}")
        raise
    recorder.finish(result.arrays.to_torch_state_dict())
    log(INFO, "Run finished; metrics.json, metrics.csv, model.pt and accuracy.png are in %s", recorder.folder)
