"""ReplyGuard: a wrapper that makes any Flower strategy safe, reproducible and resumable.

Flower's own wrapper shape (``DifferentialPrivacyServerSideFixedClipping``): it
holds the wrapped strategy, forwards every call to it and adds four things around
it. FedGMA and GMA are plain strategies; the app wraps them (and every other
strategy) in a ReplyGuard, and a Flower user may do the same.

* **Screening.** Train and evaluate replies are screened
  (:mod:`fedgma.strategies.replies`); only accepted ones reach the wrapped
  strategy, which never sees a failed or malformed reply. A client that sent an
  error, or no reply before the round timeout, counts as *failed*; a malformed
  reply as *rejected*; the counts go into the round's metrics and the reasons into
  ``notes``. Optional :class:`~fedgma.strategies.bounds.ReplyBounds` clip what one
  accepted reply may weigh and move. When too few replies are usable, the
  aggregate is not finite, or the wrapped strategy's state became non-finite, the
  round returns no arrays (Flower keeps the previous global model), the wrapped
  strategy's state is rolled back, and ``notes`` says why.
* **A fixed order.** Replies are aggregated in the order of the partition ids the
  clients report (then node ids), not in arrival order. With
  ``reproducible_sampling`` (off by default) client sampling is also seeded per
  round, over nodes listed in a fixed order (:mod:`.sampling`): in Flower's
  simulation engine the order it registered the virtual nodes in, which is their
  partition order, read once from ``grid.get_nodes()`` without a message to any
  client; with real SuperNodes the partition ids they report, each node asked
  once with a QUERY message, 500 at a time.
* **Running sums.** Where the wrapped strategy's aggregate is a sum (Flower's
  FedAvg family with its own metric aggregation, and FedGMA and GMA over it:
  :mod:`.folding`) and every sampled node's place in the order is known, each
  accepted reply is folded into running sums as it arrives and dropped, in
  partition order (a reply that comes early waits for the ones before it), so
  the server's memory does not grow with the clients per round; :meth:`start`
  runs Flower's round loop over a :class:`~.streaming.StreamingGrid` that hands
  replies over as they come. Otherwise (median, Krum, a callback of the
  user's, real SuperNodes in round 1) every reply is held until the round ends,
  as in Flower. Each round's notes say which ('aggregation').
* **Resumption.** ``round_offset`` shifts Flower's round numbers (which restart
  at 1 in every ``Strategy.start``) to the run's true rounds, and
  :meth:`state` / :meth:`restore` carry what the wrapped strategy holds between
  rounds (FedAdam's moments, FedAvgM's momentum, ...) through a checkpoint.
* **Bookkeeping.** Each round's aggregated train and client-evaluate metrics
  (``train_metrics``, ``evaluate_metrics``) and ``notes`` are kept for the
  caller to persist, without re-implementing Flower's round loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .arguments import check_fraction
from .bounds import ReplyBounds
from .protocol import ASK, CLIENT, NUM_EXAMPLES, PARTITION_ID
from .folding import TrainFold, fold_for
from .records import cast_like, decode
from .replies import (ScreenedReplies, diagnose_api_mismatch, metric_names, names_differ,
                      reported_partition, screen_one, screen_replies)
from .sampling import ListedGrid, registration_ranks, sampling_from, sampling_seed
from .streaming import StreamingGrid, simulation_window

#: How many nodes one QUERY round asks for their partition id.
QUERY_BATCH = 500


class ReplyGuard(Strategy):
    """Screen, order and count replies before the wrapped strategy aggregates them.

    Parameters
    ----------
    strategy : Strategy
        Any Message-API Flower strategy (FedAvg, FedAdam, ..., FedGMA, GMA). Train
        replies must hold one ArrayRecord of weights, plus a 'gradient' one when
        the strategy's ``expects_gradient`` is true (FedGMA's gradient direction).
    seed : int (default: 0)
        The run's seed; with ``reproducible_sampling``, sampling in round t is
        seeded from (seed, t).
    min_accepted_fraction : float (default: 0.0)
        A round counts only if at least this fraction of the clients asked to
        train sent an accepted reply (and always at least one); otherwise the
        previous global model is kept.
    bounds : ReplyBounds (default: none)
        Caps on one reply's ``num-examples`` and update norm (:mod:`.bounds`).
    reproducible_sampling : bool (default: False)
        When clients are sampled (``fraction_train`` < 1), pick the same
        partitions in every run with one seed. Free in Flower's simulation
        engine (its registration order is read once); with real SuperNodes it
        costs one QUERY message to each node whose partition id is not known yet.
    """

    def __init__(self, strategy: Strategy, seed: int = 0, min_accepted_fraction: float = 0.0,
                 bounds: ReplyBounds | None = None, reproducible_sampling: bool = False) -> None:
        self.strategy = strategy
        self.bounds = bounds or ReplyBounds()
        self.seed = seed
        self.min_accepted_fraction = check_fraction("min_accepted_fraction", min_accepted_fraction)
        self.reproducible_sampling = reproducible_sampling
        self.round_offset = 0  # rounds done before this Strategy.start (a resumed run)
        self.partitions: dict[int, int] = {}  # node id -> partition id, as clients report them
        self.train_metrics: dict[int, MetricRecord] = {}
        self.evaluate_metrics: dict[int, MetricRecord] = {}
        self.notes: dict[int, dict[str, Any]] = {}  # round -> reasons and outcomes
        self._current: dict[str, np.ndarray] = {}  # this round's global arrays
        self._sent = {"train": 0, "evaluate": 0}  # instructions sent this round
        self._connected = 0  # nodes connected when this round was configured
        self._asked: set[int] = set()  # nodes asked for their partition id (each is asked once)
        self._registered: dict[int, int] | None = None  # node -> registration rank (simulation); {}: none
        self._fold_order: list[int] | None = None  # this round's sampled nodes in partition order, if known

    @property
    def expects_gradient(self) -> bool:
        return getattr(self.strategy, "expects_gradient", False)

    @property
    def weighted_by_key(self) -> str:
        return wrapped_attribute(self.strategy, "weighted_by_key", NUM_EXAMPLES)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r})"

    def summary(self) -> None:
        log(INFO, "\t├──> %s: failed and malformed replies are counted and left out; replies aggregated in "
                  "partition order%s", type(self).__name__,
            f"; sampling seeded from seed {self.seed}" if self.reproducible_sampling else "")
        self.strategy.summary()

    # --- the round loop ---------------------------------------------------------------
    def start(self, grid: Grid, *args: Any, **kwargs: Any) -> Any:
        """Flower's own round loop (``Strategy.start``, same arguments and result) over a grid that hands each
        reply over as it arrives (:class:`~.streaming.StreamingGrid`), so that ``aggregate_train`` can fold
        replies into running sums instead of receiving them all at once."""
        return super().start(StreamingGrid(grid, window=self._window), *args, **kwargs)

    def _window(self, messages: int) -> int | None:
        """Messages in flight at once: bounded in Flower's simulation engine when it has many nodes and
        messages (:mod:`.streaming` says why), all of them with real SuperNodes."""
        return simulation_window(len(self._registered), messages) if self._registered else None

    # --- train ------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._current = decode(arrays)
        instructions = self._configure("train", server_round, arrays, config, grid)
        ranks = self._registration(grid) or self.partitions
        if not all(message.metadata.dst_node_id in ranks for message in instructions):
            self._fold_order = None
            return instructions
        instructions.sort(key=lambda message: ranks[message.metadata.dst_node_id])  # sent, hence answered, in order
        self._fold_order = [message.metadata.dst_node_id for message in instructions]
        return instructions

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        fold = fold_for(self.strategy) if self._fold_order is not None else None
        if fold is None:
            screened, clipped, aggregate = self._held(replies)
        else:
            screened, clipped, aggregate = self._folded(replies, fold)
        self.notes.setdefault(server_round, {})["aggregation"] = ("running sums" if fold is not None
                                                                  else "every reply held")
        missing = self._sent["train"] - screened.num_accepted - screened.failed - screened.rejected
        for _ in range(max(0, missing)):
            screened.fail("a client did not reply before the round timeout")
        arrays, metrics, outcome = None, None, "aggregated"
        needed = max(1, int(np.ceil(self.min_accepted_fraction * self._sent["train"] - 1e-9)))
        if screened.num_accepted < needed:
            outcome = (f"kept the previous model: {screened.num_accepted} of {self._sent['train']} replies "
                       f"accepted, {needed} needed" + (f" (min-accepted-fraction {self.min_accepted_fraction})"
                                                       if self.min_accepted_fraction else ""))
        else:
            before = strategy_state(self.strategy)  # references, no copy: see _roll_back
            arrays, metrics = aggregate(server_round)
            if arrays is None:
                outcome = "kept the previous model: the wrapped strategy returned no model"
            elif not all(np.isfinite(a).all() for a in decode(arrays).values()):
                arrays, outcome = None, "kept the previous model: the aggregate is not finite"
            elif not all_finite(strategy_state(self.strategy)):
                arrays, outcome = None, ("kept the previous model and server-optimiser state: the optimiser's "
                                         "state became non-finite")
            else:
                arrays = cast_like(arrays, self._current)
            if arrays is None:
                self._roll_back(before)
        if arrays is None:
            log(WARNING, "Round %d: %s (%s).", server_round, outcome, screened.counts())
        diagnosis = diagnose_api_mismatch(screened)
        if diagnosis:
            log(ERROR, "Round %d: %s", server_round, diagnosis)
            self.notes.setdefault(server_round, {})["diagnosis"] = diagnosis
        metrics = MetricRecord(dict(metrics or {}) | screened.counts() | {"clients-connected": self._connected,
                                                                           "replies-clipped": len(clipped)})
        self.train_metrics[server_round] = metrics
        self.notes.setdefault(server_round, {}).update({"outcome": outcome, "reasons": screened.reasons + clipped})
        return arrays, metrics

    def _held(self, replies: Iterable[Message]) -> tuple[ScreenedReplies, list[str], Any]:
        """Every reply at once, in partition order: screened, bounded, and the wrapped strategy's aggregation."""
        screened = screen_replies(self._in_partition_order(replies), self._current, self.expects_gradient,
                                  self._client_label, self.weighted_by_key)
        screened.accepted, clipped = self.bounds.apply(screened.accepted, self._current, self._client_label,
                                                       self.weighted_by_key)
        accepted = [reply.message for reply in screened.accepted]
        return screened, clipped, lambda server_round: self.strategy.aggregate_train(server_round, accepted)

    def _folded(self, replies: Iterable[Message], fold: TrainFold) -> tuple[ScreenedReplies, list[str], Any]:
        """Each reply screened, bounded and folded into running sums as soon as the replies of the nodes before
        it in partition order have been (``_fold_order``); only replies that came early are held meanwhile.

        Replies whose metric names differ from the others' are refused as :func:`.replies.screen_replies`
        refuses them: each set of names gets running sums of its own (one, unless clients disagree), and the
        set most replies have wins, ties to the one seen first in partition order."""
        screened, clipped = ScreenedReplies(), []
        groups: dict[frozenset[str], tuple[TrainFold, list[str]]] = {}

        def take(message: Message) -> None:
            reply = screen_one(message, screened, self._current, self.expects_gradient, self._client_label,
                               self.weighted_by_key)
            if reply is None:
                return
            [reply], notes = self.bounds.apply([reply], self._current, self._client_label, self.weighted_by_key)
            clipped.extend(notes)
            names = metric_names(reply.message)
            if names not in groups:
                groups[names] = (fold if not groups else fold_for(self.strategy), [])
            groups[names][0].add(reply)
            groups[names][1].append(self._client_label(reply.message))

        position = {node: index for index, node in enumerate(self._fold_order or [])}
        early: dict[int, Message] = {}
        strays: list[Message] = []  # replies from nodes this round did not ask (a caller's own list)
        next_up = 0
        for message in replies:
            self._note_partition(message)
            index = position.get(message.metadata.src_node_id)
            if index is None:
                strays.append(message)
            else:
                early[index] = message
            del message  # the loop variable would hold the last reply while the next one is awaited
            while next_up in early:
                take(early.pop(next_up))
                next_up += 1
        for index in sorted(early):  # the nodes before them never replied
            take(early.pop(index))
        for message in self._in_partition_order(strays):
            take(message)
        if not groups:
            return screened, clipped, lambda server_round: (None, None)
        usual = max(groups, key=lambda names: len(groups[names][1]))
        for names, (_, clients) in groups.items():
            if names != usual:
                for client in clients:
                    screened.reject(names_differ(client, names, usual))
        screened.folded = len(groups[usual][1])
        return screened, clipped, groups[usual][0].result

    def _roll_back(self, before: dict[str, Any]) -> None:
        """Point the wrapped strategy's attributes back at the objects they held before this round's aggregation.

        The snapshot holds references, not copies: Flower's strategies rebind their state each round
        (``self.m_t = {...}``, ``self.current_arrays = ...``) rather than editing it in place, so the objects of
        the previous round are intact and copying the whole state (FedAdam's moments: three model-sized
        arrays) every round only to throw it away is avoided. A strategy that edits its state in place cannot
        be rolled back this way; if its restored state is still not finite, that is said, not hidden."""
        restore_strategy_state(self.strategy, before)
        if not all_finite(strategy_state(self.strategy)):
            log(ERROR, "%s edited its state in place and it is not finite; ReplyGuard restores attributes, not "
                       "their contents, so the non-finite state stays. Rebind state attributes in "
                       "aggregate_train (self.x = new) instead of editing them.", type(self.strategy).__name__)

    def untrained(self) -> str | None:
        """Why the model never changed, if no round of this start aggregated a reply (None otherwise): every
        client failing is a failed run, not a completed one with an untrained model."""
        if not self.notes or any(note.get("outcome") == "aggregated" for note in self.notes.values()):
            return None
        reasons = [reason for note in self.notes.values() for reason in note.get("reasons", [])]
        return (f"no round aggregated a reply in {len(self.notes)} rounds"
                + (f"; first reason: {reasons[0]}" if reasons else ""))

    # --- evaluate ---------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._configure("evaluate", server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies = self._in_partition_order(replies)
        if not replies and not self._sent["evaluate"]:
            return None  # no client evaluation this round (fraction-evaluate = 0)
        screened = screen_replies(replies, None, label=self._client_label, weighted_by_key=self.weighted_by_key)
        for _ in range(max(0, self._sent["evaluate"] - len(replies))):
            screened.fail("a client did not send its evaluation before the round timeout")
        metrics = None
        if screened.accepted:
            metrics = self.strategy.aggregate_evaluate(server_round, [r.message for r in screened.accepted])
        metrics = MetricRecord(dict(metrics or {}) | screened.counts("evaluate-replies"))
        self.evaluate_metrics[server_round] = metrics
        if screened.reasons:
            self.notes.setdefault(server_round, {})["evaluate-reasons"] = screened.reasons
        return metrics

    # --- sampling and order -----------------------------------------------------------
    def _configure(self, phase: str, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                   grid: Grid) -> list[Message]:
        """The wrapped strategy's instructions; with ``reproducible_sampling``, over partition-ordered nodes
        and a generator of this round's own (Python's global ``random`` is not touched)."""
        configure = getattr(self.strategy, f"configure_{phase}")
        fraction = float(wrapped_attribute(self.strategy, f"fraction_{phase}", 1.0))
        listed = ListedGrid(grid)
        if phase == "train":
            self._connected = len(listed.get_node_ids())
        seeded = nullcontext()
        if self.reproducible_sampling and 0.0 < fraction < 1.0:
            listed.ranks = self._sampling_ranks(listed, server_round)
            seeded = sampling_from(random.Random(sampling_seed(self.seed, server_round, phase)))
        with seeded:
            instructions = list(configure(server_round, arrays, config, listed))
        self._sent[phase] = len(instructions)
        return instructions

    def _in_partition_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies sorted by reported partition id, then node id (arrival order must not matter)."""
        replies = list(replies)
        for message in replies:
            self._note_partition(message)
        return sorted(replies, key=lambda m: (self.partitions.get(m.metadata.src_node_id, float("inf")),
                                              m.metadata.src_node_id))

    def _note_partition(self, message: Message) -> None:
        partition = reported_partition(message)
        if partition is not None:
            self.partitions[message.metadata.src_node_id] = partition

    def _client_label(self, message: Message) -> str:
        """How reasons name a client: by partition (the same in every run) when known, else by node id."""
        node = message.metadata.src_node_id
        return f"client partition {self.partitions[node]}" if node in self.partitions else f"client node {node}"

    def _registration(self, grid: Grid) -> dict[int, int]:
        """Node -> rank in the simulation engine's registration (partition) order, read once; {} outside it."""
        if self._registered is None:
            started = time.perf_counter()
            self._registered = registration_ranks(grid.get_nodes()) or {}
            if self._registered:
                log(INFO, "%d simulated nodes in registration (partition) order, read in %.2f s; no client was "
                          "asked.", len(self._registered), time.perf_counter() - started)
        return self._registered

    def _sampling_ranks(self, grid: Grid, server_round: int) -> dict[int, int]:
        """Each node's place in the sampling order: the simulation's registration order where every node has
        one (read once), else the partition ids the clients report (asking the nodes not known yet). The
        round's ``notes`` say which ('sampling-order')."""
        if self._registration(grid) and all(node in self._registered for node in grid.get_node_ids()):
            order = "simulation registration"
        else:
            self._learn_partitions(grid)
            order = "reported partition ids"
        self.notes.setdefault(server_round, {})["sampling-order"] = order
        return self._registered if order == "simulation registration" else self.partitions

    def _learn_partitions(self, grid: Grid, timeout: float = 120.0) -> None:
        """Ask every node not asked before for its partition id (QUERY messages), at most ``QUERY_BATCH`` at a
        time: Flower's in-memory link state scans every stored message on every poll, so 10,000 questions at
        once cost minutes. A node that does not answer is reported once and not asked again; it is sampled
        after the known ones, in node-id order."""
        unasked = [node for node in grid.get_node_ids() if node not in self.partitions and node not in self._asked]
        if not unasked:
            return
        self._asked.update(unasked)
        answered = []
        for start in range(0, len(unasked), QUERY_BATCH):
            asks = [Message(RecordDict({CLIENT: ConfigRecord({ASK: PARTITION_ID})}), dst_node_id=node,
                            message_type=MessageType.QUERY) for node in unasked[start:start + QUERY_BATCH]]
            answered += [reply for reply in grid.send_and_receive(asks, timeout=timeout)
                         if reported_partition(reply) is not None]
        self._in_partition_order(answered)
        if len(answered) < len(unasked):
            log(WARNING, "%d of %d clients did not report their partition id; they are sampled after the others in "
                         "node-id order, which differs between runs, and not asked again.",
                len(unasked) - len(answered), len(unasked))

    # --- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What must survive an interruption: the wrapped strategy's attributes (its moments,
        momentum, current arrays, ...; see :func:`strategy_state`) and the node-to-partition map. The
        arrays are the strategy's own objects, not copies (a checkpoint writes them at once; Flower's
        strategies rebind rather than edit them, see :meth:`_roll_back`)."""
        return {"strategy": strategy_state(self.strategy), "partitions": dict(self.partitions)}

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


def wrapped_attribute(strategy: Strategy, name: str, default: Any) -> Any:
    """The attribute ``name`` (``fraction_train``, ``weighted_by_key``, ...) of the outermost strategy that has
    it, looking through wrappers (FedGMA, GMA and Flower's differential-privacy ones hold the strategy they
    wrap as ``strategy``); ``default`` if none has it."""
    while not hasattr(strategy, name) and isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy
    return getattr(strategy, name, default)


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """A Flower strategy's attributes that change between rounds, with those of a strategy it wraps (Flower's
    differential-privacy wrappers, FedGMA, GMA) nested under its attribute. Callables are configuration, not
    state; attributes with a leading underscore are this project's per-round scratch (the round's arrays),
    rebuilt every round (Flower's strategies have none)."""
    return {key: strategy_state(value) if isinstance(value, Strategy) else value
            for key, value in vars(strategy).items() if not callable(value) and not key.startswith("_")}


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
