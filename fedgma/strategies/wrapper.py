"""What FedGMA and GMA share: Flower's wrapper shape around the strategy they mask.

Like Flower's differential-privacy wrappers, a masking wrapper holds the wrapped
strategy as ``strategy`` and forwards sampling, configuration, evaluation and
metric aggregation to it; it keeps the round's global arrays w_t (sent in
``configure_train``) to measure the clients' updates from, and screens the train
replies as Flower's strategies do: a failed or malformed reply (missing or
mis-shaped arrays, NaN, no usable weight) is skipped, counted in the round's
metrics and logged with its reason. Any numeric dtype is accepted, as Flower's
strategies accept it (FedAdam returns float64 arrays to a float32 model, and the
clients answer in float32); :class:`~fedgma.strategies.ReplyGuard` is stricter.

The wrapped strategy's own ``start`` is not called: ``wrapper.start(...)`` runs
Flower's round loop around the wrapper. A strategy that overrides ``start`` (to
save results or log each round, as Flower's advanced-pytorch example does) loses
that behaviour, so the wrapper warns; per-round work belongs in ``start``'s
``evaluate_fn`` callback, which runs the same with or without a wrapper.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import DEBUG, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .protocol import GRADIENT, NUM_EXAMPLES, with_content
from .records import decode
from .replies import AcceptedReply, ScreenedReplies, screen_replies
from .trainable import Trainable, trainable_names, trainable_rule


class MaskingWrapper(Strategy):
    """Holds ``strategy`` and the round's global arrays; subclasses define ``aggregate_train`` and ``summary``."""

    expects_gradient = False  # train replies carry a 'gradient' ArrayRecord (FedGMA's gradient direction)

    def __init__(self, strategy: Strategy, weighted_agreement: bool, trainable: Trainable) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(f"{type(self).__name__} wraps a Flower Message-API strategy (flwr.serverapp.strategy), "
                            f"got {type(strategy).__name__}")
        if type(strategy).start is not Strategy.start:
            log(WARNING, "%s overrides start(), which %s does not call: run the wrapper's start() and move "
                         "per-round work into its evaluate_fn callback.", type(strategy).__name__, type(self).__name__)
        self.strategy = strategy
        self.weighted_agreement = weighted_agreement
        self.trainable = trainable_rule(trainable)
        self._current: dict[str, np.ndarray] | None = None  # this round's global arrays w_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.strategy).__name__})"

    @property
    def weighted_by_key(self) -> str:
        """The metric that weighs each reply: the wrapped strategy's (Flower's default 'num-examples')."""
        return getattr(self.strategy, "weighted_by_key", NUM_EXAMPLES)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = decode(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def screen(self, server_round: int, replies: Iterable[Message]) -> tuple[ScreenedReplies, list[str]]:
        """The round's screened replies and the names of the trainable arrays (the ones masked)."""
        if self._current is None:
            raise RuntimeError(f"{type(self).__name__}.aggregate_train was called before configure_train: the "
                               "wrapper measures updates from the arrays configure_train sent (Flower's "
                               "Strategy.start calls them in that order)")
        screened = screen_replies(replies, self._current, self.expects_gradient, weighted_by_key=self.weighted_by_key,
                                  exact_dtypes=False)
        log(DEBUG, "%s, round %d: %d replies accepted, %d failed, %d rejected", type(self).__name__, server_round,
            len(screened.accepted), screened.failed, screened.rejected)
        return screened, trainable_names(self._current, self.trainable)

    def sign_weights(self, replies: list[AcceptedReply]) -> list[float] | None:
        """Each reply's vote in the sign agreement: its weight, or None (one vote per client, the papers)."""
        return [reply.num_examples for reply in replies] if self.weighted_agreement else None

    @staticmethod
    def weights_only(reply: AcceptedReply) -> Message:
        """The reply as Flower's strategies expect it: one ArrayRecord (FedGMA's gradient record left out)."""
        if GRADIENT not in reply.arrays:
            return reply.message
        return with_content(reply.message, RecordDict({key: record for key, record in reply.message.content.items()
                                                      if key != GRADIENT}))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def with_counts(metrics: MetricRecord | None, screened: ScreenedReplies) -> MetricRecord:
    """The round's metrics with the reply counts (``replies-accepted``, ``-failed``, ``-rejected``)."""
    return MetricRecord(dict(metrics or {}) | screened.counts())
