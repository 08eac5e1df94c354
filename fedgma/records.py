"""ArrayRecord <-> {layer name: ndarray}, shared by the ClientApp and the strategies."""

from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, ArrayRecord


def decode(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as {layer name: read-only ndarray}, without copying the data.

    Flower stores each Array as ``.npy`` bytes and ``Array.numpy()`` copies them
    through ``np.load``; here the header is parsed and the array is a view on the
    message's bytes. On a server that decodes K model-sized replies a round, this
    removes one full copy per reply.
    """
    return {name: array_view(array) for name, array in record.items()}


def array_view(array: Array) -> np.ndarray:
    """A read-only NumPy view on one Flower Array's ``.npy`` bytes."""
    if array.stype != "numpy.ndarray":
        return array.numpy()  # raises Flower's own error for other serialisations
    header = io.BytesIO(array.data[:1024])
    major, _ = np.lib.format.read_magic(header)
    shape, fortran_order, dtype = (np.lib.format.read_array_header_1_0(header) if major == 1
                                   else np.lib.format.read_array_header_2_0(header))
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    view = np.frombuffer(array.data, dtype=dtype, count=int(np.prod(shape)), offset=header.tell())
    return view.reshape(shape, order="F" if fortran_order else "C")


def encode(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """{layer name: ndarray} as an ArrayRecord (keeps the layer order and 0-d shapes)."""
    return ArrayRecord({name: Array(np.require(a, requirements="C")) for name, a in arrays.items()})
