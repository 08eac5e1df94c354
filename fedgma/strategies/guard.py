"""ReplyGuard: a wrapper that makes any Flower strategy safe, reproducible and resumable.

Same pattern as Flower's differential-privacy wrappers: it forwards every call to
the wrapped strategy and adds four things around it.

* **Screening.** Train and evaluate replies are screened
  (:mod:`fedgma.strategies.replies`); only accepted ones reach the wrapped
  strategy. A client that sent an error, or no reply before the round timeout,
  counts as *failed*; a malformed reply as *rejected*; the counts go into the
  round's metrics and the reasons into ``notes``. When too few replies are usable
  (none, or fewer than ``min_accepted_fraction`` of those asked), or the
  aggregate is not finite, the round returns no arrays, so Flower keeps the
  previous global model, and ``notes`` says why.
* **A fixed order.** Replies are aggregated in the order of the partition ids
  the clients report (then node ids), not in arrival order, and client sampling
  is seeded per round from the run's seed over nodes listed in partition order,
  so two runs with one seed give the same model bit for bit.
* **Resumption.** ``round_offset`` shifts Flower's round numbers (which restart
  at 1 in every ``Strategy.start``) to the run's true rounds, and
  :meth:`state` / :meth:`restore` carry what the wrapped strategy holds between
  rounds (FedAdam's moments, FedAvgM's momentum, ...) through a checkpoint.
* **Bookkeeping.** Each round's aggregated train and client-evaluate metrics
  (``train_metrics``, ``evaluate_metrics``) and ``notes`` are kept for the
  ServerApp to persist, without re-implementing Flower's round loop.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..records import cast_like, decode
from .bounds import ReplyBounds
from .replies import CLIENT, PARTITION_ID, WEIGHTS, AcceptedReply, ScreenedReplies, reported_partition, screen_replies


class PartitionOrderedGrid:
    """A Grid whose ``get_node_ids`` lists nodes by partition id, then node id.

    Flower's samplers draw from that list with Python's ``random``; with a fixed
    order and a seeded ``random`` they pick the same partitions in every run, even
    though the simulation engine gives nodes new random ids each run.
    """

    def __init__(self, grid: Grid, partitions: dict[int, int]) -> None:
        self._grid = grid
        self._partitions = partitions

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=lambda node: (self._partitions.get(node, float("inf")), node))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


#: What a legacy ``ClientApp(client_fn=...)`` answers to a Message-API train or evaluate message.
LEGACY_CLIENT_SIGNS = ("fitins.parameters", "evaluateins.parameters")


def diagnose_api_mismatch(screened: ScreenedReplies) -> str | None:
    """The likely cause and fix when every reply failed because the client speaks the legacy API."""
    if screened.accepted or not screened.failed or not any(
            sign in reason for reason in screened.reasons for sign in LEGACY_CLIENT_SIGNS):
        return None
    return ("every client failed with KeyError 'fitins.parameters': the ClientApp is a legacy "
            "ClientApp(client_fn=...) serving a NumPyClient, which cannot answer this Message-API strategy. "
            "Build it with `app = fedgma.clientapp_from_numpy_client(client_fn)` instead of "
            "`ClientApp(client_fn=client_fn)` (README: 'Bring your own NumPyClient').")


def sampling_seed(seed: int, server_round: int, phase: str) -> int:
    """The seed of Python's ``random`` for one round's client sampling."""
    return int(np.random.SeedSequence([seed, server_round, {"train": 0, "evaluate": 1}[phase]]).generate_state(1)[0])


def check_fraction(what: str, value: float) -> float:
    """``value`` if it lies in [0, 1]; a ValueError naming ``what`` otherwise."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must lie in [0, 1], got {value}")
    return value


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; a ValueError naming ``what`` otherwise."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class ReplyGuard(Strategy):
    """Screen, order and count replies before the wrapped strategy aggregates them.

    Parameters
    ----------
    strategy : Strategy
        Any Message-API Flower strategy (FedAvg, FedAdam, ..., or FedGMA).
    seed : int (default: 0)
        The run's seed; client sampling in round t is seeded from (seed, t).
    min_accepted_fraction : float (default: 0.0)
        A round counts only if at least this fraction of the clients asked to
        train sent an accepted reply (and always at least one); otherwise the
        previous global model is kept.
    bounds : ReplyBounds (default: none)
        Caps on one reply's ``num-examples`` and update norm, applied to the
        accepted replies before anything aggregates them (:mod:`.bounds`).
    """

    #: The ArrayRecords every train reply must hold.
    expected_records: tuple[str, ...] = (WEIGHTS,)

    def __init__(self, strategy: Strategy, seed: int = 0, min_accepted_fraction: float = 0.0,
                 bounds: ReplyBounds | None = None) -> None:
        self.strategy = strategy
        self.bounds = bounds or ReplyBounds()
        self.seed = seed
        self.min_accepted_fraction = check_fraction("min_accepted_fraction", min_accepted_fraction)
        self.round_offset = 0  # rounds done before this Strategy.start (a resumed run)
        self.partitions: dict[int, int] = {}  # node id -> partition id, as clients report them
        self.current_arrays: dict[str, np.ndarray] = {}
        self.sent = 0  # train instructions sent this round
        self.sent_evaluate = 0  # evaluate instructions sent this round
        self.connected = 0  # clients (nodes) connected when this round was configured
        self.train_metrics: dict[int, MetricRecord] = {}
        self.evaluate_metrics: dict[int, MetricRecord] = {}
        self.notes: dict[int, dict[str, Any]] = {}  # round -> reasons and outcomes, for metrics.json

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.strategy).__name__})"

    def summary(self) -> None:
        log(INFO, "\t├──> %s: failed and malformed replies are counted and left out; replies aggregated in "
                  "partition order; sampling seeded from seed %d", type(self).__name__, self.seed)
        self.strategy.summary()

    # --- train ------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self.current_arrays = decode(arrays)
        if getattr(self.strategy, "fraction_train", 1.0) < 1.0:
            self._learn_partitions(grid)
        random.seed(sampling_seed(self.seed, server_round, "train"))
        instructions = list(self.strategy.configure_train(server_round, arrays, config,
                                                          PartitionOrderedGrid(grid, self.partitions)))
        self.sent = len(instructions)
        self.connected = len(list(grid.get_node_ids()))
        return instructions

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        screened = screen_replies(self._in_partition_order(replies), self.current_arrays, self.expected_records,
                                  self._client_label)
        missing = self.sent - len(screened.accepted) - screened.failed - screened.rejected
        for _ in range(max(0, missing)):
            screened.fail("a client did not reply before the round timeout")
        clipped = self.bounds.apply(screened.accepted, self.current_arrays, self._client_label)
        arrays, metrics, outcome = None, None, "aggregated"
        needed = max(1, int(np.ceil(self.min_accepted_fraction * self.sent - 1e-9)))
        if len(screened.accepted) < needed:
            outcome = (f"kept the previous model: {len(screened.accepted)} of {self.sent} replies accepted, "
                       f"{needed} needed" + (f" (min-accepted-fraction {self.min_accepted_fraction})"
                                             if self.min_accepted_fraction else ""))
        else:
            before = copy.deepcopy(strategy_state(self.strategy))
            arrays, metrics = self.aggregate_accepted(server_round, screened.accepted)
            if arrays is None:
                outcome = "kept the previous model: the wrapped strategy returned no model"
            elif not all(np.isfinite(a).all() for a in decode(arrays).values()):
                arrays, outcome = None, "kept the previous model: the aggregate is not finite"
            elif not all_finite(strategy_state(self.strategy)):
                arrays, outcome = None, ("kept the previous model and server-optimiser state: the optimiser's "
                                         "state became non-finite")
            else:
                arrays = cast_like(arrays, self.current_arrays)
            if arrays is None:
                restore_strategy_state(self.strategy, before)
        if arrays is None:
            log(WARNING, "Round %d: %s (%s).", server_round, outcome, screened.counts())
        diagnosis = diagnose_api_mismatch(screened)
        if diagnosis:
            log(ERROR, "Round %d: %s", server_round, diagnosis)
            self.notes.setdefault(server_round, {})["diagnosis"] = diagnosis
        metrics = MetricRecord(dict(metrics or {}) | screened.counts() | {"clients-connected": self.connected,
                                                                           "replies-clipped": len(clipped)})
        self.train_metrics[server_round] = metrics
        self.notes.setdefault(server_round, {}).update({"outcome": outcome, "reasons": screened.reasons + clipped})
        return arrays, metrics

    def aggregate_accepted(self, server_round: int,
                           replies: list[AcceptedReply]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the screened replies; subclasses transform them first."""
        return self.strategy.aggregate_train(server_round, [r.message for r in replies])

    # --- evaluate ---------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        random.seed(sampling_seed(self.seed, server_round, "evaluate"))
        instructions = list(self.strategy.configure_evaluate(server_round, arrays, config,
                                                             PartitionOrderedGrid(grid, self.partitions)))
        self.sent_evaluate = len(instructions)
        return instructions

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies = self._in_partition_order(replies)
        if not replies and not self.sent_evaluate:
            return None  # no client evaluation this round (fraction-evaluate = 0)
        screened = screen_replies(replies, None, label=self._client_label)
        for _ in range(max(0, self.sent_evaluate - len(replies))):
            screened.fail("a client did not send its evaluation before the round timeout")
        metrics = None
        if screened.accepted:
            metrics = self.strategy.aggregate_evaluate(server_round, [r.message for r in screened.accepted])
        metrics = MetricRecord(dict(metrics or {}) | screened.counts("evaluate-replies"))
        self.evaluate_metrics[server_round] = metrics
        if screened.reasons:
            self.notes.setdefault(server_round, {})["evaluate-reasons"] = screened.reasons
        return metrics

    # --- order ------------------------------------------------------------------------
    def _in_partition_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies sorted by reported partition id, then node id (arrival order must not matter)."""
        replies = list(replies)
        for message in replies:
            partition = reported_partition(message)
            if partition is not None:
                self.partitions[message.metadata.src_node_id] = partition
        return sorted(replies, key=lambda m: (self.partitions.get(m.metadata.src_node_id, float("inf")),
                                              m.metadata.src_node_id))

    def _client_label(self, message: Message) -> str:
        """How reasons name a client: by partition (the same in every run) when known, else by node id."""
        node = message.metadata.src_node_id
        return f"client partition {self.partitions[node]}" if node in self.partitions else f"client node {node}"

    def _learn_partitions(self, grid: Grid, timeout: float = 120.0) -> None:
        """Ask nodes of unknown partition for it once (a QUERY message), so sampling can use partition order."""
        unknown = [node for node in grid.get_node_ids() if node not in self.partitions]
        if not unknown:
            return
        asks = [Message(RecordDict({CLIENT: ConfigRecord({"ask": PARTITION_ID})}), dst_node_id=node,
                        message_type=MessageType.QUERY) for node in unknown]
        answered = [reply for reply in grid.send_and_receive(asks, timeout=timeout) if reported_partition(reply)
                    is not None]
        self._in_partition_order(answered)
        if len(answered) < len(unknown):
            log(WARNING, "%d of %d clients did not report their partition id; they are sampled in node-id order, "
                         "which differs between runs.", len(unknown) - len(answered), len(unknown))

    # --- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What must survive an interruption: the wrapped strategy's attributes (its moments,
        momentum, current arrays, ...; see :func:`strategy_state`) and the node-to-partition map."""
        return copy.deepcopy({"strategy": strategy_state(self.strategy), "partitions": self.partitions})

    def restore(self, state: dict[str, Any], round_offset: int) -> None:
        """Continue after ``round_offset`` finished rounds with a :meth:`state` taken then. A state that does
        not fit this strategy (read from a file) raises ValueError naming the attribute."""
        if not isinstance(state, dict) or set(state) != {"strategy", "partitions"}:
            raise ValueError("the strategy state is not one this app wrote")
        restore_strategy_state(self.strategy, state["strategy"])
        if not all(isinstance(k, int) and isinstance(v, int) for k, v in state["partitions"].items()):
            raise ValueError("the node-to-partition map holds something other than integers")
        self.partitions.update(state["partitions"])
        self.round_offset = round_offset


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """A Flower strategy's attributes that change between rounds (callables are configuration, not state),
    with those of a strategy it wraps (Flower's differential-privacy wrappers) nested under its attribute."""
    return {key: strategy_state(value) if isinstance(value, Strategy) else value
            for key, value in vars(strategy).items() if not callable(value)}


def restore_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """The inverse of :func:`strategy_state`: only attributes the strategy has, each of the type it has (or
    had none yet), so a state read from a file cannot turn a learning rate into a string."""
    for key, value in state.items():
        current = getattr(strategy, key, _MISSING)
        if current is _MISSING:
            raise ValueError(f"{type(strategy).__name__} has no attribute '{key}'")
        if isinstance(current, Strategy):
            restore_strategy_state(current, value)
        elif current is None or value is None or isinstance(value, type(current)):
            setattr(strategy, key, value)
        else:
            raise ValueError(f"{type(strategy).__name__}.{key} is a {type(current).__name__}, the state holds a "
                             f"{type(value).__name__}")


_MISSING = object()


def all_finite(value: Any) -> bool:
    """Whether every number in a strategy state (arrays, ArrayRecords, floats, nested containers) is finite."""
    if isinstance(value, ArrayRecord):
        value = decode(value)
    if isinstance(value, dict):
        return all(all_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(item) for item in value)
    if isinstance(value, np.ndarray):
        return not np.issubdtype(value.dtype, np.inexact) or bool(np.isfinite(value).all())
    if isinstance(value, float):
        return np.isfinite(value)
    return True
