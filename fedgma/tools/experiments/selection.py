"""Model selection from committed runs, the same way for every method (DomainBed's two criteria).

A tuning grid gives every method a few configurations of its own knobs (its
``[[variants]]`` that share a ``method``), run with *selection seeds*. For each
method the configuration with the highest validation accuracy (the mean over the
last ``LAST_ROUNDS`` rounds, then over the selection seeds) is selected:

* **training-domain validation** (``train-val-accuracy``: held-out training
  images coloured like the clients' data; DomainBed's ``IIDAccuracySelectionMethod``):
  nothing about the test domain is used. This is the headline.
* **test-domain validation, "oracle"** (``test-val-accuracy``: test-domain images
  disjoint from the test set; DomainBed's ``OracleSelectionMethod``): reported
  beside it and always labelled oracle.

The selected configurations are then re-run with fresh seeds (a grid with a
``[selection]`` table, :func:`selected_runs`) and reported at their last round;
the test set is read only there. Pure functions over loaded runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .results import LAST_ROUNDS, RunResult, load_runs

#: Selection criteria: name -> the validation metric it maximises.
CRITERIA = {"training-domain": "train-val-accuracy", "oracle": "test-val-accuracy"}


@dataclass(frozen=True)
class Candidate:
    """One configuration of one method in a tuning grid, with its runs over the selection seeds."""

    method: str
    variant: str  # the run name without its seed (``variant=fedavg-lr1``)
    runs: tuple[RunResult, ...]

    def score(self, key: str) -> float:
        """Mean over seeds of ``key`` averaged over each run's last rounds."""
        return statistics.fmean(validation_score(run, key) for run in self.runs)


def validation_score(run: RunResult, key: str, last: int = LAST_ROUNDS) -> float:
    """The mean of ``key`` over the run's last ``last`` rounds (one round alone is noisier)."""
    values = [value for _, value in run.series(key)[-last:]]
    if not values:
        raise ValueError(f"run {run.folder} records no '{key}': it was made without a validation set")
    return statistics.fmean(values)


def select(candidates: list[Candidate], criterion: str) -> dict[str, Candidate]:
    """Each method's best candidate under ``criterion`` (ties: the first in grid order)."""
    key = CRITERIA[criterion]
    best: dict[str, Candidate] = {}
    for candidate in candidates:
        incumbent = best.get(candidate.method)
        if incumbent is None or candidate.score(key) > incumbent.score(key):
            best[candidate.method] = candidate
    return best


def candidates_of(runs: list[tuple[str, str, Path]]) -> tuple[list[Candidate], list[str]]:
    """Candidates from (method, variant, folder) triples of a tuning grid; also the folders without a
    completed run (selection must wait for them)."""
    found = {r.folder: r for r in load_runs([folder for _, _, folder in runs if folder.exists()])}
    missing = [str(folder) for _, _, folder in runs if folder not in found]
    grouped: dict[tuple[str, str], list[RunResult]] = {}
    for method, variant, folder in runs:
        if folder in found:
            grouped.setdefault((method, variant), []).append(found[folder])
    return [Candidate(method, variant, tuple(members)) for (method, variant), members in grouped.items()], missing
