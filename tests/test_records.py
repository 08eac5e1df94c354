"""ArrayRecord <-> NumPy conversion."""

import numpy as np

from fedgma.strategies.records import decode, encode


def test_round_trip_keeps_values_shapes_and_order():
    arrays = {"w": np.random.rand(3, 4).astype(np.float32), "f": np.asfortranarray(np.random.rand(5, 6)),
              "scalar": np.array(3.0), "i": np.arange(7, dtype=np.int64)}
    decoded = decode(encode(arrays))
    assert list(decoded) == list(arrays)
    for name, array in arrays.items():
        assert decoded[name].shape == array.shape and decoded[name].dtype == array.dtype
        assert np.array_equal(decoded[name], array)

