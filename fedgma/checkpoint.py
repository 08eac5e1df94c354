"""Round checkpoints: everything a run needs to continue after an interruption, in a format that cannot
execute anything.

After every round the ServerApp replaces ``checkpoint.npz`` in the run's output
folder (:func:`fedgma.safe_files.atomic_write`: a kill leaves the old or the new
checkpoint, never half of one). It holds the global arrays, the strategy's state
between rounds (:meth:`ReplyGuard.state`: FedAdam/FedYogi/FedAdagrad moments,
FedAvgM's momentum, the node-to-partition map), the round, the random generators'
states, the metrics rows so far and the configuration.

The file is a NumPy ``.npz`` archive read with ``allow_pickle=False``: plain
arrays, and one JSON manifest (stored as bytes) that describes the state's
structure, with arrays referred to by name. Nothing in it is unpickled, so a
crafted file cannot run code (PyTorch's pickle-based ``torch.save`` files can,
which is why the old ``checkpoint.pt`` is refused, never loaded). The manifest
records the SHA-256 of every array and its own, checked on load; the zip's CRC
catches damage to the rest. A file that fails any check, or whose arrays do not
fit the model, stops the run before round 1 with an error naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedgma.strategies.records import decode, encode
from .safe_files import atomic_write
from .settings import DEFAULT_RUN_CONFIG, ConfigError, Settings, current_keys

#: The latest round checkpoint in a run's output folder, and the pickle-based file of releases before it.
CHECKPOINT = "checkpoint.npz"
OLD_CHECKPOINT = "checkpoint.pt"
#: Keys a resumed run may change: where it reads and writes, whether it resumes, how many rounds it has.
MAY_CHANGE_ON_RESUME = ("num-server-rounds", "resume", "output-dir", "data-dir", "overwrite", "tracking", "verbose")
_MANIFEST, _MANIFEST_HASH = "manifest", "manifest-sha256"


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, Any]
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    report: dict[str, Any]  # metrics.json's top level (status, wall-seconds, ...) without the rows
    random_states: dict[str, Any]


def random_states() -> dict[str, Any]:
    """The states of every generator the ServerApp process draws from."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_random_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


class _Encoder:
    """A state tree as JSON-able data, every array moved out into ``arrays`` and referred to by name."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return {"array": self._store(value)}
        if isinstance(value, torch.Tensor):
            return {"tensor": self._store(value.numpy())}
        if isinstance(value, ArrayRecord):
            return {"arrayrecord": self(decode(value))}
        if isinstance(value, tuple):
            return {"tuple": [self(item) for item in value]}
        if isinstance(value, list):
            return {"list": [self(item) for item in value]}
        if isinstance(value, dict):
            return {"dict": [[self(key), self(item)] for key, item in value.items()]}
        raise TypeError(f"a checkpoint cannot hold a {type(value).__name__} ({value!r:.80})")

    def _store(self, array: np.ndarray) -> str:
        if array.dtype == object:
            raise TypeError("a checkpoint cannot hold an array of Python objects")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = np.ascontiguousarray(array)
        return name


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :class:`_Encoder`."""
    if not isinstance(value, dict):
        return value
    (kind, body), = value.items()
    if kind == "array":
        return arrays[body]
    if kind == "tensor":
        return torch.from_numpy(arrays[body].copy())
    if kind == "arrayrecord":
        return encode(_decode(body, arrays))
    if kind == "tuple":
        return tuple(_decode(item, arrays) for item in body)
    if kind == "list":
        return [_decode(item, arrays) for item in body]
    if kind == "dict":
        return {_decode(key, arrays): _decode(item, arrays) for key, item in body}
    raise ValueError(f"unknown entry {kind!r}")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> int:
    """Write ``checkpoint.npz`` atomically; returns its size in bytes."""
    encoder = _Encoder()
    tree = encoder(vars(checkpoint))
    manifest = json.dumps({"format": 1, "state": tree, "arrays": {
        name: {"dtype": array.dtype.str, "shape": list(array.shape), "sha256": _digest(array)}
        for name, array in encoder.arrays.items()}}).encode()
    buffer = io.BytesIO()
    np.savez(buffer, **encoder.arrays, **{_MANIFEST: np.frombuffer(manifest, dtype=np.uint8),
                                         _MANIFEST_HASH: np.frombuffer(hashlib.sha256(manifest).hexdigest().encode(),
                                                                       dtype=np.uint8)})
    return atomic_write(folder / CHECKPOINT, buffer.getvalue())


def load_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint in ``folder``, verified; ConfigError naming the file if there is none or it fails a check."""
    path = folder / CHECKPOINT
    if not path.is_file():
        if (folder / OLD_CHECKPOINT).is_file():
            raise ConfigError(f"Run-config key 'resume': {folder / OLD_CHECKPOINT} is a checkpoint of an older "
                              "release, a pickle file that this release never loads (loading it could run code). "
                              "Start the run again: a new 'output-dir', or overwrite=true for this one.")
        raise ConfigError(f"Run-config key 'resume' is true but {path} does not exist: 'output-dir' must name the "
                          "folder of a run that checkpointed at least one round.")
    try:
        return Checkpoint(**_read_verified(path))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as problem:
        raise ConfigError(f"Run-config key 'resume': the checkpoint {path} is damaged or not one of this app's "
                          f"({type(problem).__name__}: {str(problem)[:300]}); start the run again in a new "
                          "'output-dir'.") from problem


def _read_verified(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as archive:
        files = {name: archive[name] for name in archive.files}
    manifest = files.pop(_MANIFEST).tobytes()
    if hashlib.sha256(manifest).hexdigest().encode() != files.pop(_MANIFEST_HASH).tobytes():
        raise ValueError("the manifest does not match its SHA-256")
    described = json.loads(manifest)
    if described.get("format") != 1 or set(described["arrays"]) != set(files):
        raise ValueError("its arrays are not the ones its manifest lists")
    for name, spec in described["arrays"].items():
        array = files[name]
        if array.dtype.str != spec["dtype"] or list(array.shape) != spec["shape"] or _digest(array) != spec["sha256"]:
            raise ValueError(f"array {name} does not match its dtype, shape or SHA-256 in the manifest")
    state = _decode(described["state"], files)
    if not isinstance(state, dict) or set(state) != set(Checkpoint.__dataclass_fields__):
        raise ValueError("its content is not a checkpoint")
    return state


def check_model_arrays(checkpoint: Checkpoint, model: dict[str, torch.Tensor], path: Path) -> None:
    """ConfigError naming ``path`` unless the checkpoint's arrays have the model's names, shapes and dtypes and
    are finite."""
    arrays = checkpoint.arrays
    if not isinstance(arrays, dict) or list(arrays) != list(model):
        raise ConfigError(f"The checkpoint {path} holds the layers {list(arrays)[:8]}, not this model's "
                          f"{list(model)[:8]}; start the run again in a new 'output-dir'.")
    for name, tensor in model.items():
        array = arrays[name]
        expected = tensor.numpy()
        if not isinstance(array, np.ndarray) or array.shape != expected.shape or array.dtype != expected.dtype:
            raise ConfigError(f"The checkpoint {path} has layer '{name}' as {getattr(array, 'dtype', type(array))} "
                              f"{getattr(array, 'shape', '')}, the model has {expected.dtype} {expected.shape}.")
        if not np.isfinite(array).all():
            raise ConfigError(f"The checkpoint {path} has non-finite values in layer '{name}'.")


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a checkpoint's configuration and this run's,
    other than those a resumed run may change."""
    keys = (set(saved) | set(current)) - set(MAY_CHANGE_ON_RESUME)
    return sorted(key for key in keys if saved.get(key) != current.get(key))


def check_resumable(checkpoint: Checkpoint, settings: Settings) -> None:
    """Refuse to resume with another configuration, or with fewer rounds than already done.

    A key the checkpoint lacks (written before the key existed) counts as that key's default.
    A key it records under an old name (``RENAMED_KEYS``) counts under its new one.
    """
    saved, current = DEFAULT_RUN_CONFIG | current_keys(checkpoint.config), settings.to_run_config()
    differing = config_differences(saved, current)
    if differing:
        details = "; ".join(f"'{k}': checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in differing)
        raise ConfigError(f"Cannot resume: the run config differs from the checkpoint's in {details}. "
                          f"Only {', '.join(MAY_CHANGE_ON_RESUME)} may change.")
    if settings.num_server_rounds < checkpoint.round:
        raise ConfigError(f"Run-config key 'num-server-rounds' is {settings.num_server_rounds}, but the checkpoint "
                          f"already holds {checkpoint.round} rounds; resume with num-server-rounds >= "
                          f"{checkpoint.round}.")
