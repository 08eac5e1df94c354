"""The central evaluation of both server apps: test the global model, print one line, record, checkpoint.

The line (``[round t/T]``) is the run's progress on the console: time since this
invocation's first evaluation, the time left at the pace of the rounds done since,
the OOD and in-distribution accuracies, the train loss, the mask density and the
reply counts (Flower's own round lines are off unless ``verbose``: fedgma.console).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log

from fedgma.strategies.records import decode

from .checkpoint import Checkpoint, random_states, save_checkpoint
from .console import clock, time_left
from .data import test_sets
from .outputs import RoundTimer, RunRecorder
from .settings import Settings
from .training import evaluate


class RoundRecords(Protocol):
    """What a guarded strategy keeps per round (ReplyGuard, and the legacy app's LegacyGuard)."""

    train_metrics: dict[int, Any]
    evaluate_metrics: dict[int, Any]
    notes: dict[int, dict[str, Any]]


class CentralEvaluation:
    """``evaluate_fn`` for ``Strategy.start``: test, log one line, record the round, checkpoint."""

    def __init__(self, settings: Settings, model: torch.nn.Module, strategy: RoundRecords, recorder: RunRecorder,
                 checkpoint_state: Callable[[], dict[str, Any]] | None, round_offset: int = 0) -> None:
        """``checkpoint_state``: the strategy's state for the checkpoint after every round, or None for a
        server app that cannot resume (no checkpoint is written); ``round_offset``: rounds done before this
        ``Strategy.start`` (a resumed run)."""
        self.settings = settings
        self.model = model
        self.strategy = strategy
        self.recorder = recorder
        self.checkpoint_state = checkpoint_state
        self.round_offset = round_offset
        self.test_sets = test_sets(settings)
        self.timer = RoundTimer()
        self.latest: ArrayRecord | None = None  # the newest global model (model.pt at the end)
        self.started: tuple[int, float] | None = None  # (round, time) of this invocation's first evaluation

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round += self.round_offset
        self.latest = arrays
        if self.started is None:
            self.started = (server_round, time.perf_counter())
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
        saved = ""
        if self.checkpoint_state is not None:
            started = time.perf_counter()
            size = save_checkpoint(self.recorder.folder, Checkpoint(
                server_round, decode(arrays), self.checkpoint_state(), self.recorder.rows,
                self.settings.to_run_config(), self.recorder.summary(), random_states()))
            saved = f" | checkpoint {size / 1e6:.1f} MB in {time.perf_counter() - started:.2f} s"
        first_round, first_time = self.started
        elapsed, total = time.perf_counter() - first_time, self.settings.num_server_rounds
        log(INFO, "[round %d/%d] %s elapsed, %s left | OOD acc %.4f | ID acc %.4f | train loss %s | "
                  "mask density %s | replies %s ok, %s failed, %s rejected | %.1f s%s", server_round, total,
            clock(elapsed), time_left(elapsed, server_round - first_round, total - server_round),
            row["ood-accuracy"], row["id-accuracy"], _fmt(row.get("train-loss")), _fmt(row.get("mask-density")),
            row.get("replies-accepted", "-"), row.get("replies-failed", "-"), row.get("replies-rejected", "-"),
            seconds, saved)
        return MetricRecord(metrics)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
