"""MNIST as NumPy arrays: from a folder of IDX .gz files (offline) or torchvision.

The canonical IDX files (``train-images-idx3-ubyte.gz`` and friends) are parsed
directly so that a missing, truncated or corrupt file gives an error naming the
file, instead of a download attempt. With no folder given, torchvision downloads
MNIST (or finds an earlier download) under ``~/.cache/fedgma``.

Splits load separately, so a deployed SuperNode needs only the two training
files and the ServerApp only the two test (``t10k``) files.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

FILES = {  # split -> (images file, labels file, number of examples)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
DEFAULT_ROOT = Path.home() / ".cache" / "fedgma"


class DataError(ValueError):
    """MNIST files are missing or unreadable; the message names the file."""


@lru_cache(maxsize=4)
def load_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ('train' or 'test') as (uint8 images (N, 28, 28), int64 digits (N,)).

    From ``data_dir`` (the split's two IDX .gz files) or, if empty, via torchvision.
    """
    images_file, labels_file, count = FILES[split]
    if not data_dir:
        return _download_with_torchvision(DEFAULT_ROOT, split)
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data-dir '{folder}' is not a folder (it must hold the MNIST IDX .gz files "
                        f"{images_file} and {labels_file})")
    return _read_idx(folder / images_file, 2051, count), _read_idx(folder / labels_file, 2049, count)


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


def _download_with_torchvision(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's MNIST under ``root``, downloaded once.

    The ServerApp and every simulation worker start at the same moment; an
    exclusive file lock makes the first one download and extract while the
    others wait and then find the files.
    """
    from torchvision.datasets import MNIST  # imported here: only this path needs torchvision

    root.mkdir(parents=True, exist_ok=True)
    try:
        with (root / ".download.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _check_cached_md5(root / "MNIST" / "raw", MNIST.resources)
            dataset = MNIST(str(root), train=split == "train", download=True)
    except DataError:
        raise
    except Exception as problem:  # noqa: BLE001 - any download failure gets the same advice
        raise DataError(f"Could not download MNIST with torchvision into {root} ({problem}). Offline, set "
                        f"the run-config key data-dir to a folder holding the four MNIST IDX .gz files, or "
                        f"copy them to {root / 'MNIST' / 'raw'}.") from problem
    return dataset.data.numpy(), dataset.targets.numpy()


def _check_cached_md5(raw: Path, resources: list[tuple[str, str]]) -> None:
    """A cached download whose md5 differs from torchvision's is named, not silently re-fetched.

    torchvision would treat it as absent and try the network (and offline, fail
    without saying which file was wrong).
    """
    for name, md5 in resources:
        path = raw / name
        if path.is_file():
            found = hashlib.md5(path.read_bytes()).hexdigest()
            if found != md5:
                raise DataError(f"MNIST file {path} has md5 {found}, expected {md5} (torchvision's); it is "
                                "damaged or another file. Delete it to download it again, or replace it with the "
                                "canonical file.")
