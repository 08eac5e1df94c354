"""Experiment grids, plots and results tables: ``python -m fedgma.tools.experiments <command>``.

    list                      the grids and their runs, with each run's state
    run GRID... --data-dir D  run grids one after the other through ``flwr run``, skipping finished runs
    plot FOLDER... --out O    accuracy, mask density and agreement plots (PNG)
    table FOLDER... --out O   summary table (summary.md and summary.csv)
    compare FOLDER...         each configuration against a baseline method, paired by seed: one table
                              (compare.md: difference, 95% CI, paired t-test p) and one figure (compare.png)
    report GRID               plot + table of a grid's results into docs/results/<grid>/
    config FILE [KEY=VALUE..] a config file plus overrides as one ``flwr run --run-config`` string
                              (Flower itself does not combine a file with key=value pairs)
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from ..local_flower import LocalFlower, run_config_arg
from fedgma.settings import ConfigError, Settings
from .grid import REPO, RESULTS, available_grids, load_grid
from fedgma.labels import method_family
from .headline import (headline_rows, mask_table, published_markdown, readme_block, runs_by_group,
                       selected_groups, selection_table, task_rows, with_holm, with_readme_block)
from .headline import to_csv as headline_csv
from .headline import to_markdown as headline_markdown
from .plots import plot_all, plot_metric_panels
from .statistics import ALPHA, holm
from .results import (LAST_ROUNDS, NO_BASELINE, baseline_label, compare_markdown, compare_rows, group_runs, load_runs,
                      summary_rows, to_csv, to_markdown)
from .runner import REUSED, run_grid, run_state, stop_on_sigterm

DOCS = REPO / "docs" / "results"
README = REPO / "README.md"


def _list(args: argparse.Namespace) -> int:
    for name in available_grids() if not args.grid else [args.grid]:
        grid = load_grid(name, args.results)
        print(f"{name}: " + (grid.pending if grid.pending else f"{len(grid.runs)} runs") + f"; {grid.description}")
        if args.grid:
            for run in grid.runs:
                state = run_state(args.results / name / run.name, int(run.config.get("num-server-rounds", 15)))
                print(f"  {state:<12} {run.name}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Each grid in turn (a queue for a long session), through one local SuperLink."""
    for name in args.grid:  # every grid is checked before anything runs
        load_grid(name, args.results)
    stop_on_sigterm()
    failures = 0
    with LocalFlower() as flower:
        for name in args.grid:
            grid = load_grid(name, args.results)  # again: a selected grid may follow its tuning grid
            if grid.pending:
                print(f"{grid.name}: not run: it {grid.pending}", file=sys.stderr, flush=True)
                failures += 1
                continue
            outcomes = run_grid(grid, args.results, args.data_dir, args.only, timeout=args.timeout * 60,
                                flower=flower, reuse=not args.no_reuse, retries=args.retries)
            failed = [o for o in outcomes if o.status not in ("completed", "skipped", REUSED)]
            failures += len(failed)
            print(f"{grid.name}: {len(outcomes) - len(failed)} of {len(outcomes)} runs completed or already "
                  f"done; {len(failed)} failed" + "".join(f"\n  {o.run.name}: {o.status}" for o in failed))
    return 1 if failures else 0


def _summary(folders: list[Path], baseline: dict | None, pool: Path | None) -> tuple[list, list[dict]]:
    """The groups of the completed runs under ``folders`` and their summary rows (see ``_write_tables``)."""
    if pool and baseline:  # one read of the pool, the grid's own runs taken from it
        pooled = load_runs([pool])
        runs = [r for r in pooled if any(r.folder.is_relative_to(f) for f in folders)]
    else:
        pooled, runs = [], load_runs(folders)
    if not runs:
        return [], []
    groups = group_runs(runs)
    mine = {r.folder for r in runs}
    return groups, summary_rows(groups, baseline, group_runs([r for r in pooled if r.folder not in mine]))


def _pilots(args: argparse.Namespace) -> int:
    """docs/results/pilot-tests.md: every paired comparison of the grids made before the selection protocol,
    with its paired t-test, Holm-corrected over all of them (what the old n = 3 findings still support)."""
    entries = []
    for name in available_grids():
        grid = load_grid(name, args.results)
        if grid.baseline and not grid.selected and not grid.pending:
            _, rows = _summary([args.results / grid.name], grid.baseline, args.results)
            entries += [(name, row) for row in rows if row["delta-final-ood-seeds"] and " " in
                        row["delta-final-ood-seeds"]]
    adjusted = holm([row["delta-p"] for _, row in entries])
    lines = ["**Every paired comparison of the pilot grids (n = 3 seeds, settings chosen on the test set: oracle), "
             f"final OOD accuracy minus the grid's baseline; paired t-test, Holm-corrected over all {len(entries)}.**",
             "", "| grid | configuration | n | difference | 95% CI | p | p (Holm) | supported at 0.05 |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, row), p_holm in zip(entries, adjusted):
        lines.append(f"| {name} | {row['configuration']} | {len(row['delta-final-ood-seeds'].split())} | "
                     f"{row['delta-final-ood-mean']:+.4f} | [{row['delta-ci-low']:+.4f}, {row['delta-ci-high']:+.4f}] "
                     f"| {row['delta-p']:.3g} | {p_holm:.3g} | {'yes' if p_holm < ALPHA else 'no'} |")
    out = args.out or DOCS
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot-tests.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _write_tables(folders: list[Path], out: Path, title: str, plots: bool = True, tables: bool = True,
                  baseline: dict | None = None, pool: Path | None = None, plot_title: str | None = None) -> int:
    """Table and/or plots of the runs under ``folders``. With ``pool``, a folder that holds ``folders``
    (``results/``), baselines may also come from its other runs (other grids); every file is read once.
    ``plot_title`` names the runs in the figures' one-line titles (default ``title``)."""
    groups, rows = _summary(folders, baseline, pool)
    if not groups:
        print(f"No completed run (metrics.json with status 'completed') under {', '.join(map(str, folders))}",
              file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    written = []
    runs = [run for group in groups for run in group.runs]
    if tables:
        for row in rows:
            if row["baseline"] == NO_BASELINE:
                print(f"warning: no completed baseline run for '{row['configuration']}' (its configuration with "
                      f"{baseline_label(baseline)}); its paired column is empty",
                      file=sys.stderr)
        (out / "summary.md").write_text((f"**{title}**\n\n" if title else "") + to_markdown(rows))
        (out / "summary.csv").write_text(to_csv(rows))
        written += [out / "summary.md", out / "summary.csv"]
        print(to_markdown(rows))
    if plots:
        written += plot_all(groups, out, title if plot_title is None else plot_title)
    print(f"{len(runs)} runs in {len(groups)} configurations -> {out}: " + ", ".join(p.name for p in written))
    return 0


def _compare(args: argparse.Namespace) -> int:
    """compare.md and compare.png: every configuration under ``folders`` against the baseline method's
    configuration of the same setting (the keys other than the method's), final OOD accuracy paired by seed."""
    runs = load_runs(args.folders)
    if not runs:
        print(f"No completed run (metrics.json with status 'completed') under {', '.join(map(str, args.folders))}",
              file=sys.stderr)
        return 1
    method, narrowing = args.baseline[0], _pairs(args.baseline[1:])
    groups = group_runs(runs)
    bases, rows = compare_rows(groups, method, narrowing)
    if not bases:
        raise ConfigError(f"--baseline {method}: no completed {method} run among the "
                          f"{len(groups)} configurations ({'; '.join(g.label for g in groups)})")
    args.out.mkdir(parents=True, exist_ok=True)
    method = method_family(bases[0].config)  # as the labels name it: FedAvg
    table = (f"**Final OOD accuracy against {method}, paired by seed** (same seed: same initial model, partitions "
             "and colours; difference with its 95% CI and a paired t-test's p, `scipy.stats`; best over rounds 1 "
             "and later, never the untrained round 0).\n\n" + compare_markdown(rows))
    (args.out / "compare.md").write_text(table)
    plot_metric_panels(bases + [g for g in groups if not any(g is b for b in bases)],
                       [("ood-accuracy", "OOD accuracy"), ("id-accuracy", "in-distribution accuracy")],
                       args.out / "compare.png", f"Accuracy by round against {method}")
    print(table + f"-> {args.out / 'compare.md'}, {args.out / 'compare.png'}")
    for row in rows:
        if row["baseline"] == NO_BASELINE:
            print(f"warning: no {method} run with the setting of '{row['configuration']}'", file=sys.stderr)
    return 0


def _pairs(pairs: list[str]) -> dict:
    """KEY=VALUE strings as run-config values (TOML syntax; a bare word or path is a string)."""
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"'{pair}' is not KEY=VALUE")
        try:
            config[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            config[key] = value  # a bare string such as a path
    return config


def _config(args: argparse.Namespace) -> int:
    config = tomllib.loads(args.file.read_text()) if args.file.suffix == ".toml" else {}
    config |= _pairs(([] if args.file.suffix == ".toml" else [str(args.file)]) + args.overrides)
    Settings.from_run_config(config)
    print(run_config_arg(config))
    return 0


def _headline(args: argparse.Namespace) -> int:
    """docs/results/headline.md and .csv: the headline table of every task in headline.toml."""
    headline = headline_rows(args.results)
    out = args.out or DOCS
    out.mkdir(parents=True, exist_ok=True)
    notes = [f"not yet: {line}" for line in headline.waiting] + [f"machines: {line}" for line in headline.machines]
    text = ("**Headline: configurations selected by training-domain validation (oracle: test-domain validation, "
            "in brackets, not tested), fresh seeds, last round; differences paired by seed, p from a paired "
            "t-test, Holm-corrected over the table.** Accuracies in %.\n\n" + headline_markdown(headline.rows)
            + "".join(f"\n- {line}" for line in notes) + ("\n" if notes else "")
            + "\n**Published centralized numbers, for orientation only** (centralized training, other splits and "
            "models: not comparable one to one with the federated rows above):\n\n"
            + published_markdown(headline.config))
    (out / "headline.md").write_text(text)
    (out / "headline.csv").write_text(headline_csv(headline.rows))
    if args.out is None:  # the committed report: the README's one-screen table follows it
        README.write_text(with_readme_block(README.read_text(), readme_block(headline)))
    print(text)
    return 0


def _report_selected(grid, args: argparse.Namespace) -> int:
    """A selected grid's selection (every candidate, both criteria) and its rows of the headline table."""
    out = args.out or DOCS / grid.name
    out.mkdir(parents=True, exist_ok=True)
    groups = runs_by_group(grid, args.results)
    rows = with_holm(task_rows(grid.name, grid, groups))
    text = (f"**{grid.description}**\n\nSelection (mean over the selection seeds of each run's last "
            f"{LAST_ROUNDS} rounds; chosen in bold):\n\n{selection_table(grid)}\nOn the fresh seeds (p Holm-"
            f"corrected within this grid only; the headline corrects over every task):\n\n{headline_markdown(rows)}")
    masks = mask_table(groups)
    if masks:
        text += ("\nWhat the masks did (fresh seeds; mean over rounds 1 to the last and over seeds: fraction of "
                 "coordinates kept, overall and per layer, and mean sign agreement |mean of the clients' signs|; a "
                 "control records the density of the mask it matched):\n\n"
                 + masks)
    if plot_metric_panels(selected_groups(rows, groups), [("ood-accuracy", "OOD accuracy"),
                                                          ("mask-density", "mask density (fraction kept)")],
                          out / "headline.png", f"Selected methods, fresh seeds: grid {grid.name}"):
        text += ("\nOOD accuracy and mask density by round, each method's training-domain choice on the fresh seeds "
                 "(bands: 95% CI of the mean over seeds; a control draws the density of the mask it matched):\n\n"
                 "![OOD accuracy and mask density by round](headline.png)\n")
    (out / "summary.md").write_text(text)
    (out / "summary.csv").write_text(headline_csv(rows))
    print(text)
    return 0


def _report(args: argparse.Namespace) -> int:
    if not args.grid:
        return _headline(args)
    grid = load_grid(args.grid, args.results)
    if grid.selected or grid.pending:
        return _report_selected(grid, args)
    return _write_tables([args.results / grid.name], args.out or DOCS / grid.name, grid.description,
                         baseline=grid.baseline, pool=args.results, plot_title=f"grid {grid.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedgma.tools.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where grids write runs (default: results/)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="grids, or one grid's runs and their states")
    listing.add_argument("grid", nargs="?", default="")
    listing.set_defaults(func=_list)
    running = commands.add_parser("run", help="run a grid (resumes: finished runs are skipped)")
    running.add_argument("grid", nargs="+",
                         help=f"grid names ({', '.join(available_grids())}) or .toml paths, run in this order")
    running.add_argument("--data-dir", default="", help="folder with the four MNIST IDX .gz files")
    running.add_argument("--only", default="", help="run only the runs whose name contains this text")
    running.add_argument("--timeout", type=float, default=360, help="minutes one run may take (default 360)")
    running.add_argument("--retries", type=int, default=1,
                         help="times a run that stops early with a checkpoint is resumed before moving on (default 1)")
    running.add_argument("--no-reuse", action="store_true",
                         help="run even the runs that equal a completed run of another grid (default: copy those)")
    running.set_defaults(func=_run)
    for name, helptext, kinds in (("plot", "plots from output folders", dict(tables=False)),
                                  ("table", "summary table from output folders", dict(plots=False))):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("folders", nargs="+", type=Path, help="run folders, or folders holding run folders")
        sub.add_argument("--out", type=Path, required=True)
        sub.add_argument("--title", default="")
        sub.add_argument("--baseline", nargs="*", default=[], metavar="KEY=VALUE",
                         help="table: compare each configuration, seed by seed, with the one that has these "
                              "values (e.g. strategy=fedavg)")
        sub.set_defaults(func=lambda a, kinds=kinds: _write_tables(a.folders, a.out, a.title,
                                                                   baseline=_pairs(a.baseline), **kinds))
    compare = commands.add_parser("compare", help="configurations against a baseline method, paired by seed: "
                                                  "compare.md and compare.png")
    compare.add_argument("folders", nargs="+", type=Path, help="run folders, or folders holding run folders")
    compare.add_argument("--baseline", nargs="+", default=["fedavg"], metavar="METHOD [KEY=VALUE]",
                         help="the method to compare with (default fedavg: plain FedAvg; fedgma, gma, fedyogi, ...), "
                              "then KEY=VALUE pairs where several of its configurations share a setting")
    compare.add_argument("--out", type=Path, default=Path("compare"), help="where to write (default ./compare)")
    compare.set_defaults(func=_compare)
    report = commands.add_parser("report", help="the headline table (no grid), or a grid's plots and table, into "
                                                "docs/results/")
    report.add_argument("grid", nargs="?", default="")
    report.add_argument("--out", type=Path, default=None)
    report.set_defaults(func=_report)
    pilots = commands.add_parser("pilots", help="paired tests of every pilot-grid comparison, Holm-corrected, "
                                                "into docs/results/pilot-tests.md")
    pilots.add_argument("--out", type=Path, default=None)
    pilots.set_defaults(func=_pilots)
    configure = commands.add_parser("config", help="a config file + KEY=VALUE overrides as one --run-config string")
    configure.add_argument("file", type=Path, help="a .toml run config (e.g. configs/seed-repo.toml)")
    configure.add_argument("overrides", nargs="*", help="KEY=VALUE pairs that replace the file's values")
    configure.set_defaults(func=_config)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
