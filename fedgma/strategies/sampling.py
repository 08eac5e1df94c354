"""Reproducible client sampling over Flower's sampler, with a generator of its own.

Flower's strategies sample nodes with ``random.sample`` (in
``flwr.serverapp.strategy.strategy_utils.sample_nodes``) from ``grid.get_node_ids()``.
The simulation engine gives nodes new random ids in every run, so to pick the
same clients in two runs with one seed, the node list must come in a fixed order
and the draw must come from a generator seeded for the round. :func:`sampling_from`
points the sampler's ``random`` at a ``random.Random`` of the round for the
duration of one ``configure_*`` call: Python's global generator is neither
reseeded nor drawn from.

The fixed order is a rank per node (:class:`ListedGrid`). In Flower's simulation
engine it costs nothing: the engine registers virtual node i (``partition-id`` i)
i-th (``vce_api._register_nodes`` in Flower 1.39 to 1.42), and ``grid.get_nodes()``
returns each node's registration time, so :func:`registration_ranks` reads the
partition order off the node list without a message to any client. Elsewhere (real
SuperNodes, which register in the order they happen to start) the ranks are the
partition ids the clients report.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from unittest import mock

import numpy as np
from flwr.common.constant import HEARTBEAT_INTERVAL_INF
from flwr.serverapp import Grid
from flwr.serverapp.strategy import strategy_utils


class ListedGrid:
    """A Grid that lists its nodes once per configure call, ordered by ``ranks`` when it has them.

    Listing the nodes is a pass over all of them in Flower's link state, and Flower's strategies list them
    twice per ``configure_*`` (how many to sample, then the sample): at 100,000 virtual clients each pass
    costs tenths of a second of the process that also runs the simulation. The list is kept for ``ttl``
    seconds, less than the second Flower's sampler sleeps between two listings while it waits for
    ``min_available_nodes``, so that wait still sees nodes that connect. With ``ranks``, nodes come by rank
    (nodes without one last), then node id.
    """

    def __init__(self, grid: Grid, ttl: float = 0.5) -> None:
        self._grid = grid
        self._ttl = ttl
        self._listed: tuple[float, list[int], list[int] | None] | None = None  # when, as listed, by rank
        self.ranks: dict[int, int] | None = None

    def get_node_ids(self) -> list[int]:
        if self._listed is None or time.monotonic() - self._listed[0] > self._ttl:
            self._listed = (time.monotonic(), list(self._grid.get_node_ids()), None)
        listed_at, nodes, ordered = self._listed
        if self.ranks is None:
            return list(nodes)
        if ordered is None:  # sorted once per listing, not once per call
            ordered = sorted(nodes, key=lambda node: (self.ranks.get(node, float("inf")), node))
            self._listed = (listed_at, nodes, ordered)
        return list(ordered)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def registration_ranks(nodes: Iterable[Any]) -> dict[int, int] | None:
    """Node id -> position in the order Flower's simulation engine registered the nodes, which is their
    partition-id order; None unless every node is a simulated one (heartbeats switched off, Flower's
    ``HEARTBEAT_INTERVAL_INF``) with a registration time no other node shares. A grid that lists nodes
    without these fields (Flower's base ``Grid.get_nodes``) gives None."""
    nodes = list(nodes)
    if not nodes or any(getattr(node, "heartbeat_interval", None) != HEARTBEAT_INTERVAL_INF
                        or not getattr(node, "registered_at", "") for node in nodes):
        return None
    times = [datetime.fromisoformat(node.registered_at) for node in nodes]
    if len(set(times)) < len(times):
        return None
    order = sorted(range(len(nodes)), key=times.__getitem__)
    return {nodes[index].node_id: rank for rank, index in enumerate(order)}


def sampling_seed(seed: int, server_round: int, phase: str) -> int:
    """The seed of one round's client sampling ("train" or "evaluate")."""
    return int(np.random.SeedSequence([seed, server_round, {"train": 0, "evaluate": 1}[phase]]).generate_state(1)[0])


@contextmanager
def sampling_from(generator: random.Random) -> Iterator[None]:
    """Flower's node sampler draws from ``generator`` inside the block (and from ``random`` again after it)."""
    with mock.patch.object(strategy_utils, "random", generator):
        yield
