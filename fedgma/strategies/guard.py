"""ReplyGuard: a wrapper that makes any Flower strategy safe against bad replies.

A client that sent an error, or no reply before the round timeout, counts as
*failed*; one whose reply is malformed counts as *rejected*.

Same pattern as Flower's differential-privacy wrappers: it forwards every call to
the wrapped strategy, and in ``aggregate_train`` it first screens the replies
(:mod:`fedgma.strategies.replies`), hands only the accepted ones on, and adds the
reply counts to the round's metrics. When no reply is usable, or the wrapped
strategy produces a non-finite model, the round returns no arrays, so Flower keeps
the previous global model, and says so in the log.

It also keeps each round's aggregated train and client-evaluate metrics
(``train_metrics``, ``evaluate_metrics``) so the ServerApp can persist them every
round without re-implementing Flower's round loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..records import decode
from .replies import WEIGHTS, AcceptedReply, screen_train_replies


class ReplyGuard(Strategy):
    """Screen train replies before the wrapped strategy aggregates them.

    Parameters
    ----------
    strategy : Strategy
        Any Message-API Flower strategy (FedAvg, FedAdam, ..., or FedGMA).
    """

    #: The ArrayRecords every train reply must hold.
    expected_records: tuple[str, ...] = (WEIGHTS,)

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.current_arrays: dict[str, np.ndarray] = {}
        self.sent = 0  # train instructions sent this round
        self.connected = 0  # clients (nodes) connected when this round was configured
        self.train_metrics: dict[int, MetricRecord] = {}
        self.evaluate_metrics: dict[int, MetricRecord] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.strategy).__name__})"

    def summary(self) -> None:
        log(INFO, "\t├──> %s: failed and malformed replies are counted and left out", type(self).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = decode(arrays)
        instructions = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.sent = len(instructions)
        self.connected = len(list(grid.get_node_ids()))
        return instructions

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        screened = screen_train_replies(replies, self.current_arrays, self.expected_records)
        if len(replies) < self.sent:  # no reply before the round timeout
            log(WARNING, "Round %d: %d of %d clients did not reply in time.", server_round,
                self.sent - len(replies), self.sent)
            screened.failed += self.sent - len(replies)
        arrays, metrics = None, None
        if screened.accepted:
            arrays, metrics = self.aggregate_accepted(server_round, screened.accepted)
        if arrays is not None and not all(np.isfinite(a).all() for a in decode(arrays).values()):
            log(WARNING, "Round %d: the aggregated model is not finite; it is discarded.", server_round)
            arrays = None
        if arrays is None:
            log(WARNING, "Round %d: no usable client update (%s); keeping the previous global model.",
                server_round, screened.counts())
        metrics = MetricRecord(dict(metrics or {}) | screened.counts() | {"clients-connected": self.connected})
        self.train_metrics[server_round] = metrics
        return arrays, metrics

    def aggregate_accepted(self, server_round: int,
                           replies: list[AcceptedReply]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the screened replies; subclasses transform them first."""
        return self.strategy.aggregate_train(server_round, [r.message for r in replies])

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.evaluate_metrics[server_round] = metrics
        return metrics
