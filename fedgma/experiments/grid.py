"""Experiment grids as data: a base configuration, the keys that vary, the seeds.

A grid is a TOML file in ``fedgma/experiments/grids/`` (or any path)::

    description = "FedAvg against FedGMA on the seed repository's setup"
    config-file = "configs/seed-repo.toml"   # optional, relative to the repository root
    supernodes = 100                         # simulated clients (num-supernodes)
    cpus-per-client = 1                      # client-resources-num-cpus

    [config]                                 # fixed run-config keys on top of config-file
    max-test-examples = 0

    [vary]                                   # every combination, first key varies slowest
    preprocessing = ["clean", "seed-repo"]
    seed = [0, 1, 2]
    strategy = ["fedavg", "fedgma"]

    [[variants]]                             # optional: named sets of keys, the innermost axis
    name = "gma-soft-tau0.4"
    method = "GMA (soft)"                    # optional: variants of one method are its tuning candidates
    gma = true

    [baseline]                               # optional: what each configuration is compared with,
    strategy = "fedavg"                      # seed by seed, in the grid's report


Each run is the base configuration, then ``[config]``, then one variant, then
one combination of ``[vary]``; its name lists the values that vary
(``preprocessing=clean__strategy=fedavg__seed=0``), so its output folder says
what it is. This module is pure: it reads files and returns :class:`Run` objects.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import ConfigError, Settings

REPO = Path(__file__).resolve().parents[2]
GRIDS = Path(__file__).resolve().parent / "grids"
_GRID_KEYS = {"description", "config-file", "supernodes", "cpus-per-client", "config", "vary", "variants",
              "baseline"}


@dataclass(frozen=True)
class Run:
    """One simulation of a grid."""

    name: str  # folder name: the varying values, seed last
    config: dict[str, Any]  # the run config passed to ``flwr run`` (output-dir added by the runner)
    supernodes: int
    cpus_per_client: int
    method: str = ""  # the method a variant tunes (``method`` in ``[[variants]]``; default: its name)

    @property
    def group(self) -> str:
        """The configuration without its seed: runs of one group differ only by seed."""
        return "__".join(part for part in self.name.split("__") if not part.startswith("seed=")) or "base"


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    runs: list[Run]
    baseline: dict[str, Any] = field(default_factory=dict)  # keys whose values make a run's control


def grid_path(name_or_path: str) -> Path:
    """A grid by name (``grids/<name>.toml``) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    named = GRIDS / f"{name_or_path}.toml"
    if not named.exists():
        known = ", ".join(sorted(p.stem for p in GRIDS.glob("*.toml")))
        raise ConfigError(f"No grid '{name_or_path}': not a .toml file and not one of {known}.")
    return named


def available_grids() -> list[str]:
    return sorted(p.stem for p in GRIDS.glob("*.toml"))


def load_grid(name_or_path: str) -> Grid:
    """Read and check a grid file; every run's configuration is validated by :class:`Settings`."""
    path = grid_path(name_or_path)
    spec = tomllib.loads(path.read_text())
    unknown = set(spec) - _GRID_KEYS
    if unknown:
        raise ConfigError(f"Grid {path}: unknown keys {sorted(unknown)}; allowed: {sorted(_GRID_KEYS)}.")
    base: dict[str, Any] = {}
    if "config-file" in spec:
        base = tomllib.loads((REPO / spec["config-file"]).read_text())
    base |= spec.get("config", {})
    vary: dict[str, list] = spec.get("vary", {})
    for key, values in vary.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"Grid {path}: [vary] {key} must be a non-empty list, got {values!r}.")
    variants = spec.get("variants", [{}])
    runs = []
    for combination in itertools.product(*vary.values()):
        chosen = dict(zip(vary, combination))
        for variant in variants:
            variant = dict(variant)
            label = variant.pop("name", None)
            method = variant.pop("method", label or "")
            config = base | variant | chosen
            Settings.from_run_config(config)  # a bad grid fails before anything runs
            runs.append(Run(_run_name(chosen, label), config, int(spec.get("supernodes", 10)),
                            int(spec.get("cpus-per-client", 1)), method))
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"Grid {path}: two runs share a name; give each variant a distinct 'name'.")
    baseline = spec.get("baseline", {})
    if not isinstance(baseline, dict):
        raise ConfigError(f"Grid {path}: [baseline] must be a table of run-config keys, got {baseline!r}.")
    Settings.from_run_config(base | baseline)  # a misspelt baseline key fails here too
    return Grid(path.stem, spec.get("description", ""), runs, baseline)


def _run_name(chosen: dict[str, Any], variant: str | None) -> str:
    parts = [f"variant={variant}"] if variant else []
    parts += [f"{key}={_short(value)}" for key, value in chosen.items() if key != "seed"]
    if "seed" in chosen:
        parts.append(f"seed={chosen['seed']}")
    return "__".join(parts) or "base"


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)
