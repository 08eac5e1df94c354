"""The headline table: selected configurations, fresh seeds, paired tests, Holm-corrected, from committed runs.

For each task (a selected grid, :mod:`.grid`) and method, the row reports the
configuration chosen by training-domain validation on its fresh seeds, at the
last round: final OOD test accuracy with a 95% confidence interval, the area
under the OOD curve (its mean over rounds 1 to T), and the paired difference to
the baseline method (same seeds) with its confidence interval, paired t-test
p-value and the Holm-corrected p-value over every comparison in the table. The
oracle selection (test-domain validation) is shown beside it, labelled, and is
not part of the tested family. A matched control of a method is compared with
that method, not with the baseline. ``plateau`` is the change of training-domain
validation accuracy over the last fifth of the rounds: near 0 means the curve had
flattened.

Every run records the machine it ran on, and the kind of machine changes the
numbers (the same run, seed and code on an AVX2-only and an AVX-512 CPU: final
OOD accuracy 0.0006 to 0.07 apart; float kernels differ, docs/experiments.md), so
the table says, per task, on which kinds of machine its runs were made and, next
to a difference, which seeds were paired across kinds.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .grid import GRIDS, Grid, load_grid
from .results import Group, RunResult, load_runs, number_text, round_mean
from .selection import CRITERIA
from .statistics import ALPHA, PairedComparison, holm, mean_interval, paired_comparison

HEADLINE = GRIDS.parent / "headline.toml"
KEY = "ood-accuracy"


@dataclass
class Row:
    task: str
    method: str
    selected: str  # the configuration (tuning variant) the training-domain criterion chose
    compared_with: str
    finals: dict[int, float]  # seed -> final OOD accuracy
    auc: float
    plateau: float
    oracle_selected: str
    oracle_mean: float
    comparison: PairedComparison | None
    p_holm: float = math.nan
    pending: str = ""  # why the row has no verdict yet (its grid, or another task of the Holm family, is running)
    cross_machine: tuple[int, ...] = ()  # seeds whose two paired runs ran on different kinds of machine

    def cells(self) -> dict[str, Any]:
        mean, low, high = mean_interval(list(self.finals.values())) if self.finals else (math.nan,) * 3
        c = self.comparison
        return {"task": self.task, "method": self.method, "selected (training-domain)": self.selected,
                "n": len(self.finals), "final OOD acc": mean, "ci-low": low, "ci-high": high,
                "oracle selected": self.oracle_selected, "oracle final OOD acc": self.oracle_mean,
                "OOD AUC": self.auc, "plateau": self.plateau, "compared with": self.compared_with,
                "difference": c.mean if c else math.nan, "difference ci-low": c.low if c else math.nan,
                "difference ci-high": c.high if c else math.nan, "p": c.p_value if c else math.nan,
                "p (Holm)": self.p_holm, "seeds paired across machines": " ".join(map(str, self.cross_machine))}


@dataclass
class Headline:
    rows: list[Row]
    waiting: list[str]  # tasks whose grid is not complete (or not started), and why
    machines: list[str]  # per task: the kinds of machine its runs were made on
    config: dict[str, Any]  # headline.toml


def final(run: RunResult) -> float:
    return float(run.rounds[-1][KEY])


def area_under_curve(run: RunResult) -> float:
    """Mean OOD accuracy over rounds 1 to T: the area under the curve, per round."""
    return statistics.fmean(value for rnd, value in run.series(KEY) if rnd > 0)


def plateau(run: RunResult, key: str = "train-val-accuracy") -> float:
    """Mean of ``key`` over the last fifth of the rounds minus its mean over the fifth before."""
    values = [value for rnd, value in run.series(key) if rnd > 0]
    fifth = max(1, len(values) // 5)
    if len(values) < 2 * fifth:
        return math.nan
    return statistics.fmean(values[-fifth:]) - statistics.fmean(values[-2 * fifth:-fifth])


def machine_kind(run: RunResult) -> str:
    """What of the recorded machine can change a run's numbers: CPU, widest vector unit, bf16 units."""
    machine = run.report.get("machine")
    if not machine:
        return "machine not recorded"
    return f"{machine['cpu']}, {machine['vector-unit']}" + (", bf16 units" if machine.get("bf16-units") else "")


def runs_by_group(grid: Grid, results: Path) -> dict[str, list[RunResult]]:
    """A grid's completed runs by group, read once for its rows, machines and mask table (none while a
    selected grid waits for its tuning grid)."""
    if grid.pending or not (results / grid.name).exists():
        return {}
    found = {r.folder: r for r in load_runs([results / grid.name])}
    groups: dict[str, list[RunResult]] = {}
    for run in grid.runs:
        if results / grid.name / run.name in found:
            groups.setdefault(run.group, []).append(found[results / grid.name / run.name])
    return groups


def _mean_final(runs: list[RunResult]) -> float:
    return statistics.fmean(final(r) for r in runs) if runs else math.nan


def _row(task: str, method: str, group: str, runs: list[RunResult], compared_with: str,
         against: list[RunResult] | None, oracle_group: str, oracle_runs: list[RunResult]) -> Row:
    finals = {int(r.config["seed"]): final(r) for r in runs}
    comparison, crossed = None, ()
    if against is not None and runs and against:
        comparison = paired_comparison(finals, {int(r.config["seed"]): final(r) for r in against})
        kinds = {int(r.config["seed"]): machine_kind(r) for r in against}
        crossed = tuple(sorted(int(r.config["seed"]) for r in runs
                               if kinds.get(int(r.config["seed"]), machine_kind(r)) != machine_kind(r)))
    return Row(task, method, group.removeprefix("variant="), compared_with, finals,
               statistics.fmean(map(area_under_curve, runs)) if runs else math.nan,
               statistics.fmean(map(plateau, runs)) if runs else math.nan,
               oracle_group.removeprefix("variant="), _mean_final(oracle_runs), comparison, cross_machine=crossed)


def task_rows(task: str, grid: Grid, groups: dict[str, list[RunResult]]) -> list[Row]:
    """The rows of one selected grid from its :func:`runs_by_group`: each method, then each control (see the
    module docstring)."""
    if grid.pending:
        return []
    trained, oracle = grid.selected["training-domain"], grid.selected["oracle"]
    base = grid.baseline_method
    base_runs = groups.get(trained[base].variant, [])
    rows = []
    for method, candidate in trained.items():
        against = None if method == base else base_runs
        rows.append(_row(task, method, candidate.variant, groups.get(candidate.variant, []), base if against else "",
                         against, oracle[method].variant, groups.get(oracle[method].variant, [])))
        for group in sorted(g for g in groups if g.startswith(candidate.variant + "+")):
            control = group.split("+", 1)[1]
            oracle_group = f"{oracle[method].variant}+{control}"
            rows.append(_row(task, f"{method}, {control} control", group, groups[group], method,
                             groups.get(candidate.variant, []), oracle_group, groups.get(oracle_group, [])))
    return rows


def selected_groups(rows: list[Row], groups: dict[str, list[RunResult]]) -> list[Group]:
    """The runs of each row's training-domain choice, labelled with the row's method (the headline figure); the
    groups are named by the runs' group, "variant=<selected>" (``_row`` shows it without the prefix)."""
    chosen = [(row.method, groups.get(f"variant={row.selected}")) for row in rows]
    return [Group(method, runs) for method, runs in chosen if runs]


def with_holm(rows: list[Row]) -> list[Row]:
    """Every row's p-value Holm-corrected over the whole table (the headline family)."""
    corrected = holm([row.comparison.p_value if row.comparison else math.nan for row in rows])
    for row, p in zip(rows, corrected):
        row.p_holm = p
    return rows


def machines_line(task: str, grid_name: str, runs: list[RunResult]) -> str:
    """How many of a task's runs ran on each kind of machine."""
    kinds = Counter(map(machine_kind, runs)).most_common()
    if len(kinds) == 1:
        return f"{task} (grid {grid_name}): all {kinds[0][1]} runs on one kind of machine ({kinds[0][0]})"
    return (f"{task} (grid {grid_name}): " + "; ".join(f"{n} runs on {kind}" for kind, n in kinds)
            + "; a difference names the seeds it paired across kinds")


def headline_rows(results: Path, spec: Path = HEADLINE) -> Headline:
    """The rows of every task in ``headline.toml``, the tasks still waiting, their machines, and the spec."""
    config = tomllib.loads(spec.read_text())
    rows, waiting, machines = [], [], []
    for task in config["task"]:
        grid = load_grid(task["grid"], results)
        groups = runs_by_group(grid, results)
        found = task_rows(task["name"], grid, groups)
        done = [run for runs in groups.values() for run in runs]
        if done:
            machines.append(machines_line(task["name"], task["grid"], done))
        if grid.pending or not found:
            waiting.append(f"{task['name']} (grid {task['grid']}): "
                           + (grid.pending if grid.pending else "no completed run yet"))
        elif len(done) < len(grid.runs):
            waiting.append(f"{task['name']} (grid {task['grid']}): {len(done)} of {len(grid.runs)} runs complete; "
                           "its rows are provisional and carry no verdict")
            for row in found:
                row.pending = "grid incomplete"
        rows += found
    if waiting:  # Holm's correction is over the whole table: no verdict is final until every task is in
        for row in rows:
            row.pending = row.pending or "other tasks incomplete"
    return Headline(with_holm(rows), waiting, machines, config)


def _pct(value: float, sign: str = "") -> str:
    """A fraction as a percentage with one decimal ("-" where it is not defined, e.g. a CI of one seed)."""
    return number_text(100 * value, f"{sign}.1f")


def _verdict(row: Row) -> str:
    if not row.comparison or math.isnan(row.p_holm):
        return "-"
    if row.pending:
        return f"none yet ({row.pending})"
    if row.p_holm < ALPHA:
        return "better" if row.comparison.mean > 0 else "worse"
    return "no difference shown"


#: Columns of the full table (docs/results/headline.md), and of the README's one-screen version.
COLUMNS = ("task", "method", "selected (training-domain val.)", "n", "final OOD acc [95% CI]",
           "oracle: selected, final OOD acc", "OOD AUC", "plateau", "difference [95% CI]", "p", "p (Holm)", "verdict")
#: The README's columns fit its 120-character lines: one table per task, the selected configurations, the
#: oracle, the raw p, the AUC and the plateau are in the full table.
README_COLUMNS = ("method", "final OOD acc [95% CI]", "difference [95% CI]", "p (Holm)", "verdict")


def _display(row: Row) -> dict[str, str]:
    """Every column of ``row`` as table text (accuracies in %)."""
    cell = row.cells()
    c = row.comparison
    difference = "-" if c is None else (f"{100 * c.mean:+.1f} [{_pct(c.low, '+')}, {_pct(c.high, '+')}] "
                                        f"vs {row.compared_with}")
    if row.cross_machine:
        difference += f"; seed {', '.join(map(str, row.cross_machine))} paired across machines"
    return {"task": row.task, "method": row.method, "selected (training-domain val.)": row.selected,
            "n": str(cell["n"]),
            "final OOD acc [95% CI]": f"{_pct(cell['final OOD acc'])} [{_pct(cell['ci-low'])}, {_pct(cell['ci-high'])}]",
            "oracle: selected, final OOD acc": f"({row.oracle_selected}, {_pct(row.oracle_mean)})",
            "OOD AUC": _pct(row.auc), "plateau": number_text(100 * row.plateau, "+.2f"),
            "difference [95% CI]": difference, "p": "-" if c is None else number_text(c.p_value, ".3g"),
            "p (Holm)": number_text(row.p_holm, ".3g"), "verdict": _verdict(row)}


def to_markdown(rows: list[Row], columns: tuple[str, ...] = COLUMNS) -> str:
    """The headline table, or the chosen ``columns`` of it (accuracies in %)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_display(row)[column] for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


#: The README's headline block lies between these lines; ``report`` rewrites it, and a test keeps it current.
README_START = "<!-- headline: written by `python -m fedgma.tools.experiments report` from committed runs -->"
README_END = "<!-- end of headline -->"


def readme_block(headline: Headline) -> str:
    """The README's one-screen headline: per task, the table's main columns, and what is not there yet."""
    tasks = list(dict.fromkeys(row.task for row in headline.rows))
    tables = "\n".join(f"**{task}**\n\n" + to_markdown([r for r in headline.rows if r.task == task], README_COLUMNS)
                       for task in tasks)
    notes = "".join(f"\n- not yet: {line}" for line in headline.waiting)
    return f"{README_START}\n{tables}{notes}{chr(10) if notes else ''}{README_END}"


def with_readme_block(readme: str, block: str) -> str:
    """``readme`` with its headline block replaced by ``block``."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no headline block: it needs the line {README_START!r} and, after it, "
                         f"{README_END!r}")
    return readme[:start] + block + readme[end + len(README_END):]


def published_markdown(config: dict[str, Any]) -> str:
    """The ``[[published]]`` tables of ``headline.toml``: centralized numbers quoted with their source."""
    parts = []
    for table in config.get("published", []):
        lines = [f"*{table['source']}.* {table['setup']}.", "", "| method | test-environment acc (%) |", "|---|---|"]
        lines += [f"| {name} | {values[0]:.1f}" + (f" ± {values[1]:.1f}" if len(values) > 1 else "") + " |"
                  for name, *values in table["rows"]]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")


def to_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    cells = [row.cells() for row in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(cells[0]) if cells else ["task"])
    writer.writeheader()
    writer.writerows(cells)
    return buffer.getvalue()


def mask_table(groups: dict[str, list[RunResult]]) -> str:
    """What the masks did on a grid's runs (:func:`runs_by_group`): per configuration, the fraction of
    coordinates kept and the mean sign agreement, over every round and seed, overall and per layer.

    Why: accuracy says whether a mask helped; these say whether it reacted to the clients' disagreement at
    all (say, when one environment's colour points the other way), which the controls cannot show.
    """
    masked = {name: runs for name, runs in groups.items()
              if any("mask-density" in row for run in runs for row in run.rounds)}
    if not masked:
        return ""
    layers = list(dict.fromkeys(key for runs in masked.values() for row in runs[0].rounds for key in row
                                if key.startswith("mask-density/")))  # in the model's order
    header = ["configuration", "n", "mask density", "mean sign agreement"] + [
        key.removeprefix("mask-density/") for key in layers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in sorted(masked.items()):
        lines.append(f"| {name.removeprefix('variant=')} | {len(runs)} | "
                     + " | ".join(number_text(round_mean(runs, key), ".3f")
                                  for key in ["mask-density", "mean-agreement", *layers]) + " |")
    return "\n".join(lines) + "\n"


def selection_table(grid: Grid) -> str:
    """Every candidate of a selected grid's tuning grid with both validation scores; the chosen in bold."""
    if grid.pending:
        return f"Selection {grid.pending}.\n"
    lines = ["| method | configuration | seeds | training-domain val. acc | test-domain val. acc (oracle) |",
             "|---|---|---|---|---|"]
    for candidate in grid.candidates:
        marks = [f"**{candidate.score(key):.4f}**" if grid.selected[name][candidate.method] == candidate
                 else f"{candidate.score(key):.4f}" for name, key in CRITERIA.items()]
        lines.append(f"| {candidate.method} | {candidate.variant.removeprefix('variant=')} | {len(candidate.runs)} | "
                     + " | ".join(marks) + " |")
    return "\n".join(lines) + "\n"
