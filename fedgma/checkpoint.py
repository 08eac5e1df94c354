"""Round checkpoints: everything a run needs to continue after an interruption.

After every round the ServerApp replaces ``checkpoint.pt`` in the run's output
folder (written to a temporary file, then renamed, so a kill leaves either the
old or the new checkpoint, never half of one). It holds the global arrays, the
strategy's state between rounds (:meth:`ReplyGuard.state`: FedAdam/FedYogi/
FedAdagrad moments, FedAvgM's momentum, the node-to-partition map), the round,
the random generators' states, the metrics rows so far and the configuration.
``resume=true`` loads it and continues with the next round.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .outputs import CHECKPOINT
from .settings import DEFAULT_RUN_CONFIG, ConfigError, Settings

#: Keys a resumed run may change: where it reads and writes, whether it resumes, how many rounds it has.
MAY_CHANGE_ON_RESUME = ("num-rounds", "resume", "output-dir", "data-dir")


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


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> int:
    """Write ``checkpoint.pt`` atomically; returns its size in bytes."""
    path = folder / CHECKPOINT
    tmp = path.with_suffix(".pt.tmp")
    torch.save(vars(checkpoint), tmp, pickle_protocol=4)  # protocol 4 stores NumPy arrays as raw bytes
    os.replace(tmp, path)
    return path.stat().st_size


def load_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint in ``folder``; ConfigError if there is none or it cannot be read."""
    path = folder / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"Run-config key 'resume' is true but {path} does not exist: 'output-dir' must name the "
                          "folder of a run that checkpointed at least one round.")
    try:
        return Checkpoint(**torch.load(path, weights_only=False))
    except Exception as problem:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise ConfigError(f"Run-config key 'resume': cannot read the checkpoint {path}: {problem}") from problem


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a checkpoint's configuration and this run's,
    other than those a resumed run may change."""
    keys = (set(saved) | set(current)) - set(MAY_CHANGE_ON_RESUME)
    return sorted(key for key in keys if saved.get(key) != current.get(key))


def check_resumable(checkpoint: Checkpoint, settings: Settings) -> None:
    """Refuse to resume with another configuration, or with fewer rounds than already done.

    A key the checkpoint lacks (written before the key existed) counts as that key's default.
    """
    saved, current = DEFAULT_RUN_CONFIG | checkpoint.config, settings.to_run_config()
    differing = config_differences(saved, current)
    if differing:
        details = "; ".join(f"'{k}': checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in differing)
        raise ConfigError(f"Cannot resume: the run config differs from the checkpoint's in {details}. "
                          f"Only {', '.join(MAY_CHANGE_ON_RESUME)} may change.")
    if settings.num_rounds < checkpoint.round:
        raise ConfigError(f"Run-config key 'num-rounds' is {settings.num_rounds}, but the checkpoint already "
                          f"holds {checkpoint.round} rounds; resume with num-rounds >= {checkpoint.round}.")
