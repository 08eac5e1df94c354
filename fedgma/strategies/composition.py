"""What masking means over each Flower strategy: defined exactly, or refused before round 1.

GMA rewrites each reply's trainable arrays to w_t + m * (w_k - w_t) and lets the
wrapped strategy aggregate the rewritten replies. That is exactly the journal
version only where the strategy's rule permits it:

* ``weighted-mean``: the server update starts from the weighted mean of the
  replies (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad). The mean of
  the masked replies is w_t + m * mean(Delta_k), because m is shared: exact GMA.
* ``coordinate-wise``: a per-coordinate order statistic (FedMedian,
  FedTrimmedAvg). Scaling coordinate j of every update by the same m_j >= 0
  keeps the order of the updates there, so the result is w_t + m * R(Delta): the
  mask commutes with the aggregator.

Selection rules (Krum, MultiKrum, Bulyan) choose replies by distances between
updates, and q-FedAvg re-weights each by its update's norm: masking first would
change what they select or weigh, a different algorithm under a familiar name, so
they are refused, as is every strategy whose ``aggregate_train`` this table does
not know (a subclass that overrides it, XGBoost bagging, Flower's DP wrappers).
A user whose own strategy does aggregate one of these ways says so with
``aggregation=`` and owns that claim.

FedGMA's update is FedAvg's weighted mean plus a masked server step, so it is
defined over strategies whose aggregation *is* FedAvg's (FedAvg, FedProx) and
refused over any other server update.
"""

from __future__ import annotations

from typing import Any

from flwr.server import strategy as legacy
from flwr.serverapp.strategy import (Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg,
                                     FedYogi, MultiKrum, QFedAvg)

WEIGHTED_MEAN, COORDINATE_WISE = "weighted-mean", "coordinate-wise"
AGGREGATIONS = (WEIGHTED_MEAN, COORDINATE_WISE)

#: How Flower's strategies aggregate, keyed by the function that does it (``aggregate_train``, or
#: ``aggregate_fit`` on the legacy API): a subclass that keeps the function keeps the meaning (FedProx,
#: Krum and the legacy FedOpt inherit theirs).
KNOWN = {FedAvg.aggregate_train: WEIGHTED_MEAN, FedAvgM.aggregate_train: WEIGHTED_MEAN,
         FedAdam.aggregate_train: WEIGHTED_MEAN, FedYogi.aggregate_train: WEIGHTED_MEAN,
         FedAdagrad.aggregate_train: WEIGHTED_MEAN, FedMedian.aggregate_train: COORDINATE_WISE,
         FedTrimmedAvg.aggregate_train: COORDINATE_WISE,
         legacy.FedAvg.aggregate_fit: WEIGHTED_MEAN, legacy.FedAvgM.aggregate_fit: WEIGHTED_MEAN,
         legacy.FedAdam.aggregate_fit: WEIGHTED_MEAN, legacy.FedYogi.aggregate_fit: WEIGHTED_MEAN,
         legacy.FedAdagrad.aggregate_fit: WEIGHTED_MEAN, legacy.FedMedian.aggregate_fit: COORDINATE_WISE,
         legacy.FedTrimmedAvg.aggregate_fit: COORDINATE_WISE}

_SELECTS = "selects replies by the distances between their updates, so masking each reply first changes which " \
           "replies are selected"
_REWEIGHTS = "weights each reply by the norm of its update, so masking each reply first changes its weight"
#: Why masking each reply first is not GMA over these.
REFUSED = {MultiKrum.aggregate_train: _SELECTS, Bulyan.aggregate_train: _SELECTS, QFedAvg.aggregate_train: _REWEIGHTS,
           legacy.Krum.aggregate_fit: _SELECTS, legacy.Bulyan.aggregate_fit: _SELECTS,
           legacy.QFedAvg.aggregate_fit: _REWEIGHTS}

#: FedGMA's w_bar: the functions that compute FedAvg's weighted mean.
FEDAVG = (FedAvg.aggregate_train, legacy.FedAvg.aggregate_fit)


def aggregating_function(strategy: Any) -> Any:
    """The function that aggregates a strategy's train replies (``aggregate_train``, or legacy ``aggregate_fit``)."""
    return getattr(type(strategy), "aggregate_train", None) or getattr(type(strategy), "aggregate_fit", None)


class CompositionError(TypeError):
    """A masking wrapper around a strategy for which it has no exact meaning."""


def gma_aggregation(strategy: Any, declared: str | None = None) -> str:
    """``weighted-mean`` or ``coordinate-wise``: how ``strategy`` aggregates, or CompositionError naming it."""
    name = type(strategy).__name__
    if declared is not None:
        if declared not in AGGREGATIONS:
            raise ValueError(f"GMA aggregation must be one of {', '.join(map(repr, AGGREGATIONS))}, got {declared!r}")
        return declared
    function = aggregating_function(strategy)
    if function in REFUSED:
        raise CompositionError(f"GMA({name}) is refused: {name} {REFUSED[function]}. Use GMA over FedAvg, FedProx, "
                               "FedAvgM, FedAdam, FedYogi, FedAdagrad, FedMedian or FedTrimmedAvg.")
    if function not in KNOWN:
        raise CompositionError(
            f"GMA({name}) is refused: GMA does not know how {name}'s {function.__name__} aggregates, so it cannot say "
            f"what masking each reply first would mean. If {name} starts its server update from the weighted mean "
            f"of the replies, pass GMA({name}(...), aggregation='weighted-mean'); if it is a per-coordinate order "
            "statistic, aggregation='coordinate-wise'.")
    return KNOWN[function]


def check_fedgma_strategy(strategy: Any, declared: str | None = None) -> None:
    """CompositionError unless ``strategy`` aggregates as FedAvg does (FedGMA's w_bar)."""
    name = type(strategy).__name__
    if declared is not None and declared != WEIGHTED_MEAN:
        raise CompositionError(f"FedGMA is defined over a weighted mean only (aggregation='{WEIGHTED_MEAN}'), "
                               f"got aggregation={declared!r}")
    function = aggregating_function(strategy)
    if declared == WEIGHTED_MEAN or function in FEDAVG:
        return
    raise CompositionError(
        f"FedGMA({name}) is refused: FedGMA's update is FedAvg's weighted mean plus a masked server step, and "
        f"{name} " + ("has a server update of its own. For the gradient mask with a server optimiser use "
                      f"GMA({name}(...)), the journal version; for the workshop version wrap FedAvg or FedProx."
                      if KNOWN.get(function) == WEIGHTED_MEAN else
                      "aggregates by a rule of its own; FedGMA is defined over FedAvg and FedProx only."
                      if function in KNOWN or function in REFUSED else
                      f"does not aggregate as FedAvg does. If its {getattr(function, '__name__', 'aggregation')} "
                      f"returns the weighted mean of the replies, pass aggregation='{WEIGHTED_MEAN}'."))


def check_weighted_agreement(wrapper: str, strategy: Any, aggregation: str, weighted_agreement: bool) -> None:
    """CompositionError for example-weighted agreement over an aggregation meant to resist a hostile client."""
    if weighted_agreement and aggregation == COORDINATE_WISE:
        raise CompositionError(f"{wrapper}({type(strategy).__name__}) with weighted_agreement=True is refused: one "
                               "client claiming many examples would choose the mask, which the robust aggregator "
                               "cannot undo; use the unweighted agreement (one vote per client)")

