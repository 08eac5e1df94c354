"""MNIST as NumPy arrays: from a folder of IDX .gz files (offline) or torchvision.

The four canonical files (``train-images-idx3-ubyte.gz`` and friends) are parsed
directly so that a missing, truncated or corrupt file gives an error naming the
file, instead of a download attempt. With no folder given, torchvision downloads
MNIST (or finds an earlier download) under ``~/.cache/fedgma``.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 2051, 60000),
    "train_labels": ("train-labels-idx1-ubyte.gz", 2049, 60000),
    "test_images": ("t10k-images-idx3-ubyte.gz", 2051, 10000),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 2049, 10000),
}
DEFAULT_ROOT = Path.home() / ".cache" / "fedgma"


class DataError(ValueError):
    """MNIST files are missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class Mnist:
    """Grey-scale digits, uint8 (N, 28, 28), and their digit labels, int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@lru_cache(maxsize=2)
def load_mnist(data_dir: str = "") -> Mnist:
    """MNIST from ``data_dir`` (four IDX .gz files) or, if empty, via torchvision."""
    if not data_dir:
        return _download_with_torchvision(DEFAULT_ROOT)
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data-dir '{folder}' is not a folder (it must hold the four MNIST IDX .gz files: "
                        f"{', '.join(name for name, _, _ in FILES.values())})")
    return Mnist(**{key: _read_idx(folder / name, magic, count) for key, (name, magic, count) in FILES.items()})


def _read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"MNIST file missing: {path}")
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as problem:
        raise DataError(f"MNIST file {path} is not a readable gzip file: {problem}") from problem
    header = 8 if magic == 2049 else 16
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"MNIST file {path} is corrupt: expected IDX magic number {magic}")
    dims = [int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(1, header // 4)]
    expected = int(np.prod(dims))
    if dims[0] != count or len(raw) - header != expected:
        raise DataError(f"MNIST file {path} is corrupt: header says {dims}, expected {count} items and "
                        f"{expected} data bytes, found {len(raw) - header}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return array.astype(np.int64) if magic == 2049 else array


def _download_with_torchvision(root: Path) -> Mnist:
    from torchvision.datasets import MNIST  # imported here: only this path needs torchvision

    try:
        train, test = (MNIST(str(root), train=flag, download=True) for flag in (True, False))
    except Exception as problem:  # noqa: BLE001 - any download failure gets the same advice
        raise DataError(f"Could not download MNIST with torchvision into {root} ({problem}). Offline, set "
                        f"the run-config key data-dir to a folder holding the four MNIST IDX .gz files, or "
                        f"copy them to {root / 'MNIST' / 'raw'}.") from problem
    return Mnist(train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy())
