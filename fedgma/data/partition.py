"""Splitting the MNIST training set across clients with flwr-datasets partitioners.

The partitioners run on a small local ``datasets.Dataset`` of (digit, index)
rows, so no image bytes are copied and nothing is downloaded; each client then
takes its images by index. Partitioning is by digit, so ``pathological`` with two
classes per client gives every client exactly two digits (McMahan et al.).
``datasets`` and ``flwr_datasets`` are imported where a partition is made: only
clients make one, and importing them (``flwr_datasets`` brings seaborn and
scipy along) is about 1.9 s of every ServerApp's start otherwise.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PARTITIONERS = ("pathological", "iid", "dirichlet")


def make_partitioner(kind: str, num_partitions: int, seed: int, classes_per_client: int = 2,
                     alpha: float = 0.5) -> Partitioner:
    """A flwr-datasets partitioner by run-config name (unbound to data)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if kind == "pathological":
        return PathologicalPartitioner(num_partitions=num_partitions, partition_by="label",
                                       num_classes_per_partition=classes_per_client,
                                       class_assignment_mode="first-deterministic", seed=seed)
    if kind == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if kind == "dirichlet":
        return DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=seed)
    raise ValueError(f"Unknown partitioner {kind!r}; allowed values: {', '.join(PARTITIONERS)}")


@lru_cache(maxsize=4)
def _bound_partitioner(labels: bytes, kind: str, num_partitions: int, seed: int, classes_per_client: int,
                       alpha: float) -> Partitioner:
    """One partitioner per process and configuration: partitioning runs once, not per client."""
    from datasets import Dataset

    digits = np.frombuffer(labels, dtype=np.int64)
    partitioner = make_partitioner(kind, num_partitions, seed, classes_per_client, alpha)
    partitioner.dataset = Dataset.from_dict({"label": digits, "index": np.arange(len(digits))})
    return partitioner


def partition_indices(labels: np.ndarray, kind: str, num_partitions: int, partition_id: int, seed: int,
                      classes_per_client: int = 2, alpha: float = 0.5) -> np.ndarray:
    """Indices into ``labels`` of the examples held by client ``partition_id``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, num-partitions={num_partitions})")
    partitioner = _bound_partitioner(np.ascontiguousarray(labels, dtype=np.int64).tobytes(), kind,
                                     num_partitions, seed, classes_per_client, alpha)
    return np.asarray(partitioner.load_partition(partition_id)["index"], dtype=np.int64)
