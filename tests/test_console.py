"""The console: Flower's per-round lines and final dump are dropped unless verbose; the app's round line and
the grid runner say how long is left."""

from __future__ import annotations

import logging

from fedgma.console import STRATEGY_DIR, clock, quiet_flower_rounds, time_left
from flwr.common.logger import FLOWER_LOGGER


def record(path, function: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("flwr", level, str(path), 1, "line", None, None, func=function)


def test_flower_round_lines_are_dropped_unless_verbose(tmp_path):
    loop = record(STRATEGY_DIR / "strategy.py", "start")  # [ROUND n/N], MetricRecords, "Final results"
    sampled = record(STRATEGY_DIR / "fedavg.py", "configure_train")  # "Sampled 10 nodes" every round
    received = record(STRATEGY_DIR / "fedavg.py", "_check_and_log_replies")  # "Received 10 results", every round
    kept = [record(STRATEGY_DIR / "fedavg.py", "summary"),  # the strategy's settings, once
            record(STRATEGY_DIR / "strategy.py", "start", logging.WARNING),  # warnings and errors
            record(tmp_path / "fedgma" / "evaluation.py", "__call__")]  # the app's own round line
    with quiet_flower_rounds(verbose=False):
        assert not any(FLOWER_LOGGER.filter(r) for r in (loop, sampled, received))
        assert all(FLOWER_LOGGER.filter(r) for r in kept)
    assert FLOWER_LOGGER.filter(loop)  # only while the rounds run
    with quiet_flower_rounds(verbose=True):
        assert FLOWER_LOGGER.filter(loop) and FLOWER_LOGGER.filter(sampled)


def test_time_left_at_the_pace_so_far():
    assert clock(247.4) == "0:04:07" and clock(3 * 3600 + 61) == "3:01:01"
    assert time_left(60.0, 2, 3) == "0:01:30"  # 30 s per round, 3 rounds to go
    assert time_left(5.0, 0, 3) == "-"  # nothing done yet: no pace
