"""Results tables from output folders alone: load runs, group them by configuration, summarise.

A run is an output folder with a ``metrics.json`` (written by the ServerApp).
Runs whose configurations differ only by ``seed`` (and by where they read and
write: ``output-dir``, ``data-dir``, ``resume``) form one group; a key that a run
made by an older release does not record counts as that key's default (it did
not exist then, and its default is the old behaviour); a group's label
names the keys in which the groups differ. A *baseline* (``{"strategy":
"fedavg"}``) pairs each group with the group that differs from it only in those
keys, and the table adds the per-seed difference in final OOD accuracy: runs
with the same seed share the initial model, the partitions and the colours, so
a paired difference is less noisy than two means over seeds. Everything
here is pure Python on the loaded JSON, so every table can be rebuilt from
committed ``metrics.json`` files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgma.settings import DEFAULT_RUN_CONFIG, ConfigError, current_keys
from fedgma.labels import METHOD_KEYS, configuration_label, inert_keys, method_family, short_value
from .statistics import paired_comparison

#: Keys that say where a run reads and writes, which seed it drew, or what it prints and logs to: not part
#: of its configuration.
NOT_CONFIGURATION = ("seed", "output-dir", "data-dir", "resume", "overwrite", "tracking", "verbose")
THRESHOLDS = (0.6, 0.7)
LAST_ROUNDS = 5  # the "OOD acc, last 5 rounds" column: mean over the last rounds of each run
IS_BASELINE = "(itself)"  # the ``baseline`` column of a group that is its own baseline
NO_BASELINE = "(missing)"  # ... of a group whose baseline has no completed run (yet)


@dataclass(frozen=True)
class RunResult:
    folder: Path
    report: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration under today's key names, keys it does not record filled with today's defaults."""
        return DEFAULT_RUN_CONFIG | current_keys(self.report["config"])

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.report["rounds"]

    @property
    def completed(self) -> bool:
        return self.report.get("status") == "completed"

    def series(self, key: str) -> list[tuple[int, float]]:
        """(round, value) for every round that has ``key``."""
        return [(row["round"], float(row[key])) for row in self.rounds if key in row]


@dataclass(frozen=True)
class Group:
    label: str
    runs: list[RunResult]
    differing: tuple[str, ...] = ()  # the keys in which the groups it was formed with differ

    @property
    def config(self) -> dict[str, Any]:
        """The configuration the group's runs share (but the seed and paths)."""
        return self.runs[0].config


def load_runs(paths: list[Path], completed_only: bool = True) -> list[RunResult]:
    """Every run folder (holding metrics.json) at or below ``paths``, sorted by path."""
    found = []
    for path in paths:
        files = [path / "metrics.json"] if (path / "metrics.json").exists() else sorted(path.rglob("metrics.json"))
        for file in files:
            report = json.loads(file.read_text())
            if "config" in report and "rounds" in report:
                found.append(RunResult(file.parent, report))
    runs = sorted({r.folder: r for r in found}.values(), key=lambda r: str(r.folder))
    return [r for r in runs if r.completed] if completed_only else runs


def configuration_of(config: dict[str, Any], with_seed: bool = False) -> tuple:
    """A run config as a comparable value: every key but paths (and but the seed unless ``with_seed``) and
    those the run ignores (``inert_keys``), unrecorded keys at their defaults."""
    config = DEFAULT_RUN_CONFIG | config
    ignored = (set(NOT_CONFIGURATION) - ({"seed"} if with_seed else set())) | inert_keys(config)
    return tuple(sorted((k, json.dumps(v)) for k, v in config.items() if k not in ignored))


def group_runs(runs: list[RunResult]) -> list[Group]:
    """Runs grouped by configuration (all keys but seed and paths), in first-seen order."""
    groups: dict[tuple, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(configuration_of(run.config), []).append(run)
    configs = [members[0].config for members in groups.values()]
    differing = [key for key in configs[0] if key not in NOT_CONFIGURATION
                 and len({json.dumps(c.get(key)) for c in configs}) > 1] if configs else []
    return [Group(configuration_label(members[0].config, differing), members, tuple(differing))
            for members in groups.values()]


def rounds_to_reach(run: RunResult, threshold: float, key: str = "ood-accuracy") -> int | None:
    """First round whose ``key`` reaches ``threshold`` (None if it never does)."""
    return next((r for r, value in run.series(key) if value >= threshold), None)


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def is_baseline(group: Group, baseline: dict[str, Any]) -> bool:
    """Whether ``group`` already has the ``baseline`` values."""
    config = group.runs[0].config
    return configuration_of(config | baseline) == configuration_of(config)


def baseline_of(group: Group, groups: list[Group], baseline: dict[str, Any]) -> Group | None:
    """The group equal to ``group`` but for the ``baseline`` values (None for a baseline group itself)."""
    if is_baseline(group, baseline):
        return None
    wanted = configuration_of(group.runs[0].config | baseline)
    return next((other for other in groups if configuration_of(other.runs[0].config) == wanted), None)


def paired_differences(group: Group, base: Group, key: str = "ood-accuracy") -> dict[int, float]:
    """Final ``key`` of each of the group's runs minus that of the baseline run with the same seed."""
    final = {run.config["seed"]: run.rounds[-1][key] for run in base.runs}
    return {run.config["seed"]: run.rounds[-1][key] - final[run.config["seed"]]
            for run in group.runs if run.config["seed"] in final}


def summarise(group: Group, base: Group | None = None, base_label: str = "") -> dict[str, Any]:
    """One table row: mean and std over the group's seeds (and, with ``base``, paired differences)."""
    runs = group.runs
    final = [r.rounds[-1]["ood-accuracy"] for r in runs]
    best = [best_after_training(r) for r in runs]
    final_id = [r.rounds[-1]["id-accuracy"] for r in runs]
    row: dict[str, Any] = {"configuration": group.label, "n": len(runs),
                           "rounds": max(r.rounds[-1]["round"] for r in runs),
                           "seeds": " ".join(str(r.config.get("seed")) for r in runs)}
    # Sampling 20 of 100 two-digit clients swings the model from round to round: the mean over the last
    # rounds says more than the last one alone (and, unlike the best round, is not chosen on the test set).
    last = [statistics.fmean(v for _, v in r.series("ood-accuracy")[-LAST_ROUNDS:]) for r in runs]
    for name, values in (("final-ood", final), ("last-ood", last), ("best-ood", best), ("final-id", final_id)):
        row[f"{name}-mean"], row[f"{name}-std"] = mean_std(values)
    for threshold in THRESHOLDS:
        reached = [rounds_to_reach(r, threshold) for r in runs]
        hits = [x for x in reached if x is not None]
        row[f"rounds-to-{threshold:g}"] = statistics.fmean(hits) if hits else math.nan
        row[f"reached-{threshold:g}"] = len(hits)
    for key in ("mask-density", "mask-effect", "mean-agreement"):
        row[f"{key}-mean"] = round_mean(runs, key)
    row["wall-minutes-mean"] = statistics.fmean(r.report.get("wall-seconds", math.nan) for r in runs) / 60
    # The median is robust to the first round (workers start) and the odd round slowed by other work.
    seconds = [v for r in runs for rnd, v in r.series("seconds") if rnd > 0]
    row["round-seconds-median"] = statistics.median(seconds) if seconds else math.nan
    row["num-clients"] = max(int(r.report.get("num-clients", 0)) for r in runs)
    differences = paired_differences(group, base) if base else {}
    row["baseline"] = (base_label or base.label) if base else ""
    row["delta-final-ood-mean"], row["delta-final-ood-std"] = mean_std(list(differences.values()))
    row["delta-final-ood-seeds"] = " ".join(f"{seed}:{d:+.4f}" for seed, d in sorted(differences.items()))
    test = paired_comparison(differences, dict.fromkeys(differences, 0.0))  # paired: the differences against 0
    row["delta-ci-low"], row["delta-ci-high"], row["delta-p"] = test.low, test.high, test.p_value
    return row


def best_after_training(run: RunResult, key: str = "ood-accuracy") -> float:
    """The best ``key`` of the rounds that trained (round 0, the untrained model, only if there is no other):
    a 3-round run's "best" is otherwise the initial model's coin flip."""
    values = [v for rnd, v in run.series(key) if rnd > 0] or [v for _, v in run.series(key)]
    return max(values)


def round_mean(runs: list[RunResult], key: str) -> float:
    """The mean of ``key`` over every training round (not round 0, the initial model) of every run; NaN where
    no run recorded it (a run without a mask records no mask keys)."""
    values = [v for r in runs for rnd, v in r.series(key) if rnd > 0]
    return statistics.fmean(values) if values else math.nan


def number_text(value: float, spec: str) -> str:
    """``value`` as a table shows it (``format`` with ``spec``), or "-" where it is not defined (NaN: a mask key
    that a run without a mask never recorded, a CI of one seed, a p-value no test gave)."""
    return "-" if math.isnan(value) else format(value, spec)


def baseline_label(baseline: dict[str, Any]) -> str:
    """The baseline values as the table names them (``strategy=fedavg, p=0.7``)."""
    return ", ".join(f"{key}={short_value(value)}" for key, value in baseline.items())


def summary_rows(groups: list[Group], baseline: dict[str, Any] | None = None,
                 pool: list[Group] | None = None) -> list[dict[str, Any]]:
    """One row per group; with ``baseline``, each paired with its baseline group, looked for among
    ``groups`` and ``pool`` (the runs of other grids, say) (docs/experiments.md)."""
    if not baseline:
        return [summarise(group) for group in groups]
    candidates = groups + (pool or [])
    label = baseline_label(baseline)
    rows = [summarise(group, baseline_of(group, candidates, baseline), label) for group in groups]
    for row, group in zip(rows, groups):
        if is_baseline(group, baseline):
            row["baseline"] = IS_BASELINE
        elif not row["baseline"]:
            row["baseline"] = NO_BASELINE
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["configuration"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (accuracies as mean ± std over n seeds)."""
    paired = any(row["baseline"] for row in rows)
    columns = ["configuration", "n", "final OOD acc", "OOD acc, last 5 rounds", "best OOD acc (rounds 1+)",
               "final ID acc",
               "rounds to 0.6 OOD", "rounds to 0.7 OOD", "mask density", "mask effect", "mean agreement",
               "wall min", "s per round (median)"] + (["final OOD minus baseline, per seed"] if paired else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        def pm(name: str) -> str:  # one seed has no spread to show
            return f"{row[f'{name}-mean']:.4f}" + (f" ± {row[f'{name}-std']:.4f}" if row["n"] > 1 else "")

        def reach(threshold: float) -> str:
            mean, hits = row[f"rounds-to-{threshold:g}"], row[f"reached-{threshold:g}"]
            return "never" if hits == 0 else f"{mean:.1f}" + ("" if hits == row["n"] else f" ({hits}/{row['n']})")

        def mask(key: str, spec: str) -> str:  # runs without a mask recorded none
            return number_text(row[f"{key}-mean"], spec)

        lines.append(f"| {row['configuration']} | {row['n']} | {pm('final-ood')} | {pm('last-ood')} | "
                     f"{pm('best-ood')} | {pm('final-id')} | {reach(0.6)} | {reach(0.7)} | "
                     f"{mask('mask-density', '.3f')} | {mask('mask-effect', '.2g')} | "
                     f"{mask('mean-agreement', '.3f')} | "
                     f"{row['wall-minutes-mean']:.1f} | {row['round-seconds-median']:.1f} |"
                     + (f" {_paired(row)} |" if paired else ""))
    return "\n".join(lines) + "\n"


def _paired(row: dict[str, Any]) -> str:
    if row["baseline"] == IS_BASELINE:
        return "baseline"
    if row["baseline"] == NO_BASELINE:
        return "no baseline run"
    if not row["delta-final-ood-seeds"]:
        return "-"
    spread = f" ± {row['delta-final-ood-std']:.4f}" if " " in row["delta-final-ood-seeds"] else ""
    test = "" if math.isnan(row["delta-p"]) else (f", 95% CI [{row['delta-ci-low']:+.4f}, {row['delta-ci-high']:+.4f}],"
                                                  f" p {row['delta-p']:.2g}")
    return (f"{row['delta-final-ood-mean']:+.4f}{spread} ({row['delta-final-ood-seeds']}){test} "
            f"vs {row['baseline']}")


def setting_of(config: dict[str, Any]) -> tuple:
    """A run config without its method (every method key at its default): what methods are compared under."""
    return configuration_of(config | {key: DEFAULT_RUN_CONFIG[key] for key in METHOD_KEYS})


def compare_rows(groups: list[Group], method: str, narrowing: dict[str, Any]) -> tuple[list[Group], list[dict]]:
    """The baseline groups (method family ``method``, "fedavg" = plain FedAvg, with the ``narrowing`` values) and
    one :func:`summarise` row per other group, paired seed by seed with the baseline of its setting; ConfigError
    naming ``--baseline`` when a setting has several baseline configurations."""
    bases = [g for g in groups if method_family(g.config).casefold() == method.casefold()
             and all(g.config.get(key) == value for key, value in narrowing.items())]
    rows = []
    for group in groups:
        if any(group is base for base in bases):
            continue
        same = [base for base in bases if setting_of(base.config) == setting_of(group.config)]
        if len(same) > 1:
            raise ConfigError(f"--baseline {method}: {len(same)} {method} configurations share the setting of "
                              f"'{group.label}' ({'; '.join(b.label for b in same)}); name one with KEY=VALUE "
                              "after the method (e.g. --baseline fedavg server-momentum-lr=0.5)")
        rows.append(summarise(group, same[0], same[0].label) if same else summarise(group) | {"baseline": NO_BASELINE})
    return bases, rows


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table: each configuration against its baseline, paired by seed."""
    lines = ["| configuration | n | final OOD acc | best OOD acc (rounds 1+) | baseline | pairs | final OOD minus "
             "baseline [95% CI] | p (paired t-test) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        paired = row["delta-final-ood-seeds"]
        pairs = len(paired.split()) if paired else 0
        difference = (f"{row['delta-final-ood-mean']:+.4f} [{number_text(row['delta-ci-low'], '+.4f')}, "
                      f"{number_text(row['delta-ci-high'], '+.4f')}]" if pairs else "-")
        baseline = "no run with the same setting" if row["baseline"] == NO_BASELINE else row["baseline"]
        lines.append(f"| {row['configuration']} | {row['n']} | {row['final-ood-mean']:.4f} | "
                     f"{row['best-ood-mean']:.4f} | {baseline} | {pairs} | {difference} | "
                     f"{number_text(row['delta-p'], '.3g')} |")
    return "\n".join(lines) + "\n"
