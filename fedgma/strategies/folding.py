"""Train replies folded into running sums as they arrive, for the strategies whose aggregate is a sum.

A *fold* takes one round's accepted replies one at a time (``add``) and gives the
round's aggregate at the end (``result``); it holds one running sum per array
(:mod:`.sums`), never the replies, so the server's memory does not grow with the
clients per round. :func:`fold_for` gives one for

* Flower's FedAvg, FedProx, FedAvgM, FedAdam, FedYogi and FedAdagrad (their own
  ``aggregate_train``) when they aggregate metrics with Flower's own
  ``aggregate_metricrecords``: the weighted mean of the replies' arrays and
  metrics is handed to the strategy as one reply whose weight is the sum of the
  clients' (:class:`MeanFold`). The strategy's mean of that one reply is the mean
  itself, bit for bit, so its own server update (FedAvgM's momentum, FedAdam's
  moments) runs on what it would have computed from every reply, up to the order
  of floating-point additions, and no callback of the user's sees a made-up reply;
* FedGMA and GMA over one of those (their ``fold`` method), which add the sign
  sums and, for FedGMA's gradient direction, the weighted sum of gradients.

Anything else gets None (FedMedian, FedTrimmedAvg, Krum, q-FedAvg and Flower's DP
wrappers need every reply or every update's norm; a strategy or metric callback of
the user's may read each reply): :class:`~.guard.ReplyGuard` then holds every reply
until the round ends, as Flower's own round loop does.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from .protocol import NUM_EXAMPLES, with_content
from .records import encode
from .replies import AcceptedReply
from .sums import MetricSums, WeightedSums

#: The ``aggregate_train`` functions whose result is a function of the weighted mean of the replies alone (a
#: subclass that keeps one keeps the meaning: FedProx keeps FedAvg's).
MEAN_AGGREGATES = frozenset({FedAvg.aggregate_train, FedAvgM.aggregate_train, FedAdam.aggregate_train,
                             FedYogi.aggregate_train, FedAdagrad.aggregate_train})


class TrainFold(Protocol):
    """One round's aggregation from running sums."""

    def add(self, reply: AcceptedReply) -> None: ...

    def result(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]: ...


def fold_for(strategy: Strategy) -> TrainFold | None:
    """A fold that aggregates exactly as ``strategy`` does, or None where the strategy needs every reply."""
    fold = getattr(strategy, "fold", None)
    if callable(fold):
        return fold()
    if (getattr(type(strategy), "aggregate_train", None) in MEAN_AGGREGATES
            and getattr(strategy, "train_metrics_aggr_fn", None) is aggregate_metricrecords):
        return MeanFold(strategy)
    return None


class MeanFold:
    """The weighted mean of the replies' arrays and metrics, handed to a FedAvg-family strategy as one reply."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.weight_name = getattr(strategy, "weighted_by_key", NUM_EXAMPLES)
        self.arrays = WeightedSums()
        self.metrics = MetricSums(self.weight_name)
        self._template: Message | None = None  # the first reply's metadata, without its content
        self._keys: tuple[str, str] = ("", "")  # the replies' ArrayRecord and MetricRecord keys

    def add(self, reply: AcceptedReply) -> None:
        metrics_key, metrics = next(iter(reply.message.content.metric_records.items()))
        if self._template is None:
            self._template = with_content(reply.message, RecordDict())
            self._keys = (reply.weights_key, metrics_key)
        self.arrays.add(reply.weights, reply.num_examples)
        self.metrics.add(metrics, reply.num_examples)

    def mean(self) -> dict[str, np.ndarray]:
        return self.arrays.mean()

    def finish(self, server_round: int, arrays: dict[str, np.ndarray]) -> tuple[ArrayRecord | None,
                                                                                MetricRecord | None]:
        """The strategy's own ``aggregate_train`` on one reply holding ``arrays`` (the mean, or the mean with
        a wrapper's mask applied) and the mean metrics, weighing as much as all the replies together."""
        if self._template is None:
            raise ValueError("no reply was folded in this round")
        arrays_key, metrics_key = self._keys
        content = RecordDict({arrays_key: encode(arrays), metrics_key: MetricRecord(
            self.metrics.mean() | {self.weight_name: self.arrays.total})})
        return self.strategy.aggregate_train(server_round, [with_content(self._template, content)])

    def result(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.finish(server_round, self.mean())


def mean_fold_of(strategy: Strategy) -> MeanFold | None:
    """The :class:`MeanFold` of a wrapped strategy, or None (a wrapper's fold needs the plain weighted mean)."""
    fold = fold_for(strategy)
    return fold if isinstance(fold, MeanFold) else None
