"""What a run prints: the app's one line per round, and Flower's own round-by-round lines only when asked.

Flower's ``Strategy.start`` logs, every round, a ``[ROUND n/N]`` banner, the
sampling and reply counts, and each aggregated ``MetricRecord`` (one line of about
750 characters here), then a "Final results" dump of every metric of every round
(360 lines for 15 rounds). The app's own line (:mod:`fedgma.evaluation`) already
carries the round, the time, the accuracies, the mask density and the replies, so
with ``verbose=false`` (the default) :func:`quiet_flower_rounds` drops those INFO
records while the round loop runs. The strategy's summary of its settings, below
the app's start-up line, and every warning and error still show.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import flwr.serverapp.strategy
from flwr.common.logger import FLOWER_LOGGER

#: Where Flower's Message-API strategies and their round loop live.
STRATEGY_DIR = Path(flwr.serverapp.strategy.__file__).parent
#: The functions of that loop that log every round (start also logs the "Final results" dump), and the one that
#: repeats, before the strategy's summary, what the app's own start-up line says (rounds, model size).
QUIET_FUNCTIONS = frozenset({"start", "configure_train", "configure_evaluate", "aggregate_train",
                             "aggregate_evaluate", "_check_and_log_replies", "log_strategy_start_info"})


class FlowerRoundLines(logging.Filter):
    """Drops the INFO records that Flower's strategies log from their round loop; keeps everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno > logging.INFO or record.funcName not in QUIET_FUNCTIONS
                or Path(record.pathname).parent != STRATEGY_DIR)


@contextmanager
def quiet_flower_rounds(verbose: bool) -> Iterator[None]:
    """Within the block, Flower's per-round lines and final dump are dropped, unless ``verbose``."""
    if verbose:
        yield
        return
    quiet = FlowerRoundLines()
    FLOWER_LOGGER.addFilter(quiet)
    try:
        yield
    finally:
        FLOWER_LOGGER.removeFilter(quiet)


def clock(seconds: float) -> str:
    """A duration as h:mm:ss (0:04:07)."""
    return str(timedelta(seconds=round(seconds)))


def time_left(elapsed: float, rounds_done: int, rounds_left: int) -> str:
    """The remaining time at the mean pace of the rounds done so far ("-" before the first round is done)."""
    return clock(elapsed / rounds_done * rounds_left) if rounds_done else "-"
