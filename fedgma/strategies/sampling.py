"""Reproducible client sampling over Flower's sampler, with a generator of its own.

Flower's strategies sample nodes with ``random.sample`` (in
``flwr.serverapp.strategy.strategy_utils.sample_nodes``) from ``grid.get_node_ids()``.
The simulation engine gives nodes new random ids in every run, so to pick the
same clients in two runs with one seed, the node list must come in a fixed order
(by the partition ids the clients report) and the draw must come from a generator
seeded for the round. :func:`sampling_from` points the sampler's ``random`` at a
``random.Random`` of the round for the duration of one ``configure_*`` call:
Python's global generator is neither reseeded nor drawn from.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
from flwr.serverapp import Grid
from flwr.serverapp.strategy import strategy_utils


class PartitionOrderedGrid:
    """A Grid whose ``get_node_ids`` lists nodes by partition id, then node id."""

    def __init__(self, grid: Grid, partitions: dict[int, int]) -> None:
        self._grid = grid
        self._partitions = partitions

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=lambda node: (self._partitions.get(node, float("inf")), node))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def sampling_seed(seed: int, server_round: int, phase: str) -> int:
    """The seed of one round's client sampling ("train" or "evaluate")."""
    return int(np.random.SeedSequence([seed, server_round, {"train": 0, "evaluate": 1}[phase]]).generate_state(1)[0])


@contextmanager
def sampling_from(generator: random.Random) -> Iterator[None]:
    """Flower's node sampler draws from ``generator`` inside the block (and from ``random`` again after it)."""
    with mock.patch.object(strategy_utils, "random", generator):
        yield
