"""Reproducible client sampling over Flower's samplers, without touching Python's global ``random``.

Flower's strategies sample nodes with ``random.sample`` from ``grid.get_node_ids()``.
The simulation engine gives nodes new random ids in every run, so to pick the
same clients in two runs with one seed, the node list must come in a fixed order
(by the partition ids the clients report) and ``random`` must be seeded per round.
:func:`seeded_random` does the seeding and then puts the global generator back as
it was, so no other code's random stream is changed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.serverapp import Grid


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
def seeded_random(seed: int) -> Iterator[None]:
    """Python's global ``random`` seeded with ``seed`` inside the block, and restored after it."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)
