"""What FedGMA and GMA share: Flower's wrapper shape around the strategy they mask.

Like Flower's differential-privacy wrappers, a masking wrapper holds the wrapped
strategy as ``strategy`` and forwards sampling, configuration and evaluation to
it; it keeps the round's global arrays w_t (sent in ``configure_train``) to
measure the clients' updates from, and reads the train replies once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from .records import decode
from .replies import AcceptedReply, read_replies


class MaskingWrapper(Strategy):
    """Holds ``strategy`` and the round's global arrays; subclasses define ``aggregate_train`` and ``summary``."""

    def __init__(self, strategy: FedAvg, weighted_agreement: bool) -> None:
        self.strategy = strategy
        self.weighted_agreement = weighted_agreement
        self._current: dict[str, np.ndarray] = {}  # this round's global arrays w_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.strategy).__name__})"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = decode(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def read(self, replies: Iterable[Message]) -> tuple[list[AcceptedReply], list[float], list[float] | None]:
        """The replies without an error, their weights, and the weights of their signs (None: one vote each)."""
        read = read_replies(replies, self.strategy.weighted_by_key)
        weights = [reply.num_examples for reply in read]
        return read, weights, weights if self.weighted_agreement else None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
