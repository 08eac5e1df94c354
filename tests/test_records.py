"""ArrayRecord <-> NumPy conversion (zero-copy views on the message bytes)."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedgma.strategies.records import decode, encode


def test_round_trip_keeps_values_shapes_and_order():
    arrays = {"w": np.random.rand(3, 4).astype(np.float32), "f": np.asfortranarray(np.random.rand(5, 6)),
              "scalar": np.array(3.0), "i": np.arange(7, dtype=np.int64)}
    decoded = decode(encode(arrays))
    assert list(decoded) == list(arrays)
    for name, array in arrays.items():
        assert decoded[name].shape == array.shape and decoded[name].dtype == array.dtype
        assert np.array_equal(decoded[name], array)


def test_decode_matches_flower_for_fortran_and_channels_last_arrays():
    record = ArrayRecord({"f": Array(np.asfortranarray(np.random.rand(4, 3))),
                          "cl": Array(torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last).numpy())})
    for name, view in decode(record).items():
        assert np.array_equal(view, record[name].numpy())
        assert not view.flags.writeable  # a view on the message, not a copy
