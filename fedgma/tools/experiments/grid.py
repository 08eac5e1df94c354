"""Experiment grids as data: a base configuration, the keys that vary, the seeds.

A grid is a TOML file in ``fedgma/tools/experiments/grids/`` (or any path)::

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

A *selected* grid has no runs of its own design: it re-runs, with fresh seeds,
the configuration each method of a tuning grid selects (:mod:`.selection`),
under each criterion, and optional matched controls of a selected method::

    description = "..."
    [selection]
    from = "irm-tune"                        # the tuning grid, whose runs must all be completed
    seeds = [10, 11, 12, 13, 14]             # fresh: none of them was used to select
    baseline = "FedAvg"                      # the method every other is compared with

    [config]                                 # optional: run-config keys set on top of each chosen
    environments = "0.05,0.1,0.15,0.2,0.7"   # configuration (its knobs stay as selected)

    [[controls]]                             # optional: the selected FedGMA again, its mask replaced
    method = "FedGMA"
    name = "uniform-step"
    fedgma-control = "uniform-step"


Each run is the base configuration, then ``[config]``, then one variant, then
one combination of ``[vary]``; its name lists the values that vary
(``preprocessing=clean__strategy=fedavg__seed=0``), so its output folder says
what it is. This module is pure: it reads files and returns :class:`Run` objects.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgma.settings import ConfigError, Settings
from fedgma.labels import short_value
from .selection import CRITERIA, Candidate, candidates_of, select

REPO = Path(__file__).resolve().parents[3]
GRIDS = Path(__file__).resolve().parent / "grids"
RESULTS = REPO / "results"
_GRID_KEYS = {"description", "config-file", "supernodes", "cpus-per-client", "config", "vary", "variants",
              "baseline"}
_SELECTED_GRID_KEYS = {"description", "selection", "config", "controls"}


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
    # A selected grid: criterion -> method -> the chosen candidate, the baseline method, and why it cannot
    # run yet (its tuning grid is incomplete; then ``runs`` is empty).
    selected: dict[str, dict[str, Candidate]] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)  # every configuration of the tuning grid
    baseline_method: str = ""
    pending: str = ""


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


def load_grid(name_or_path: str, results: Path = RESULTS) -> Grid:
    """Read and check a grid file; every run's configuration is validated by :class:`Settings`.
    A selected grid's runs follow from the completed runs of its tuning grid under ``results``."""
    path = grid_path(name_or_path)
    spec = tomllib.loads(path.read_text())
    if "selection" in spec:
        return _selected_grid(path, spec, results)
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
    parts += [f"{key}={short_value(value)}" for key, value in chosen.items() if key != "seed"]
    if "seed" in chosen:
        parts.append(f"seed={chosen['seed']}")
    return "__".join(parts) or "base"


def _selected_grid(path: Path, spec: dict[str, Any], results: Path) -> Grid:
    """The runs of a grid with a ``[selection]`` table (see the module docstring)."""
    unknown = set(spec) - _SELECTED_GRID_KEYS
    selection = spec["selection"]
    if unknown or not {"from", "seeds", "baseline"} <= set(selection):
        raise ConfigError(f"Grid {path}: a selected grid has the keys {sorted(_SELECTED_GRID_KEYS)} and a "
                          "[selection] table with 'from', 'seeds' and 'baseline'.")
    source = load_grid(selection["from"], results)
    methods = {run.method for run in source.runs}
    controls = [dict(control) for control in spec.get("controls", [])]
    for name in [selection["baseline"]] + [control.get("method") for control in controls]:
        if name not in methods:
            raise ConfigError(f"Grid {path}: method {name!r} is not one of grid {source.name}'s: {sorted(methods)}.")
    candidates, missing = candidates_of([(run.method, run.group, results / source.name / run.name)
                                         for run in source.runs])
    grid = Grid(path.stem, spec.get("description", ""), [], baseline_method=selection["baseline"])
    if missing:
        return dataclasses.replace(grid, pending=f"waits for {len(missing)} of {len(source.runs)} runs of grid "
                                                 f"{source.name} to complete (run it first)")
    selected = {criterion: select(candidates, criterion) for criterion in CRITERIA}
    chosen = {candidate.variant for by_method in selected.values() for candidate in by_method.values()}
    templates = {run.group: run for run in source.runs}
    runs = []
    for seed in selection["seeds"]:
        for variant in [group for group in templates if group in chosen]:  # the tuning grid's order
            template = templates[variant]
            config = template.config | spec.get("config", {}) | {"seed": seed}
            Settings.from_run_config(config)
            runs.append(dataclasses.replace(template, name=f"{variant}__seed={seed}", config=config))
            for control in (c for c in controls if c["method"] == template.method):
                keys = {k: v for k, v in control.items() if k not in ("method", "name")}
                Settings.from_run_config(config | keys)
                runs.append(dataclasses.replace(template, name=f"{variant}+{control['name']}__seed={seed}",
                                                config=config | keys,
                                                method=f"{template.method} + {control['name']} control"))
    return dataclasses.replace(grid, runs=runs, selected=selected, candidates=candidates)
