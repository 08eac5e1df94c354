"""ArrayRecord <-> {layer name: ndarray}, shared by the ClientApp and the strategies."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def decode(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as {layer name: ndarray}."""
    return {name: array.numpy() for name, array in record.items()}


def encode(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """{layer name: ndarray} as an ArrayRecord (keeps the layer order)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})
