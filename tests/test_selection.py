"""Model selection and the headline table on a small synthetic set of runs (no training)."""

import json

import pytest

from fedgma.tools.experiments.grid import load_grid
from fedgma.tools.experiments.__main__ import main
from fedgma.tools.experiments.headline import (headline_rows, mask_table, runs_by_group, selected_groups,
                                               selection_table, task_rows, to_markdown, with_holm)

TUNE = """
description = "tiny tuning grid"
supernodes = 2
[config]
num-server-rounds = 10
[vary]
seed = [0, 1]
[[variants]]
name = "avg-a"
method = "FedAvg"
strategy = "fedavg"
[[variants]]
name = "avg-b"
method = "FedAvg"
strategy = "fedavgm"
[[variants]]
name = "gma-a"
method = "GMA"
strategy = "fedavg"
gma = true
tau = 0.2
[[variants]]
name = "gma-b"
method = "GMA"
strategy = "fedavg"
gma = true
tau = 0.8
[[variants]]
name = "fedgma-a"
method = "FedGMA"
strategy = "fedgma"
"""

FINAL = """
description = "tiny selected grid"
[selection]
from = "{tune}"
seeds = [10, 11, 12, 13, 14]
baseline = "FedAvg"
[config]
environments = "0.1,0.7"
[[controls]]
method = "FedGMA"
name = "random-mask"
fedgma-control = "random-mask"
"""

# (training-domain validation, test-domain validation) of each tuning configuration: the criteria disagree on GMA.
SCORES = {"avg-a": (0.80, 0.20), "avg-b": (0.70, 0.30), "gma-a": (0.60, 0.50), "gma-b": (0.75, 0.10),
          "fedgma-a": (0.5, 0.5)}


AVX512 = {"cpu": "AMD EPYC", "cores": 2, "vector-unit": "avx512f", "bf16-units": True}


def write_run(folder, config, ood, train_val=0.5, test_val=0.5, rounds=10, machine=AVX512, masks=None):
    """A completed run's metrics.json; ``masks(round)``, if given, the mask keys the server records each round."""
    folder.mkdir(parents=True)
    rows = [{"round": r, "ood-accuracy": ood * r / rounds, "train-val-accuracy": train_val,
             "test-val-accuracy": test_val} | (masks(r) if masks and r > 0 else {}) for r in range(rounds + 1)]
    (folder / "metrics.json").write_text(json.dumps({"config": config, "rounds": rows, "status": "completed",
                                                     "machine": machine}))


@pytest.fixture
def grids(tmp_path):
    (tmp_path / "tune.toml").write_text(TUNE)
    (tmp_path / "final.toml").write_text(FINAL.format(tune=tmp_path / "tune.toml"))
    return tmp_path / "tune.toml", tmp_path / "final.toml", tmp_path / "results"


def test_a_selected_grid_waits_for_its_tuning_grid(grids):
    tune, final, results = grids
    grid = load_grid(str(final), results)
    assert grid.pending.startswith("waits for 10 of 10 runs of grid tune") and grid.runs == []


def test_selection_picks_by_validation_never_by_test_and_reruns_with_fresh_seeds(grids):
    tune, final, results = grids
    for run in load_grid(str(tune), results).runs:
        variant = run.group.removeprefix("variant=")
        # the test accuracy would pick the other configuration: selection must not look at it
        write_run(results / "tune" / run.name, run.config, ood=1 - SCORES[variant][0], train_val=SCORES[variant][0],
                  test_val=SCORES[variant][1])
    grid = load_grid(str(final), results)
    chosen = {criterion: {m: c.variant for m, c in by.items()} for criterion, by in grid.selected.items()}
    assert chosen["training-domain"] == {"FedAvg": "variant=avg-a", "GMA": "variant=gma-b",
                                         "FedGMA": "variant=fedgma-a"}
    assert chosen["oracle"] == {"FedAvg": "variant=avg-b", "GMA": "variant=gma-a", "FedGMA": "variant=fedgma-a"}
    assert all(run.config["environments"] == "0.1,0.7" for run in grid.runs)  # [config] on top of the choice
    seeds = {run.config["seed"] for run in grid.runs}
    assert seeds == {10, 11, 12, 13, 14}  # none of the selection seeds
    groups = {run.group for run in grid.runs}
    assert groups == {"variant=avg-a", "variant=avg-b", "variant=gma-a", "variant=gma-b", "variant=fedgma-a",
                      "variant=fedgma-a+random-mask"}
    control = next(run for run in grid.runs if run.group.endswith("+random-mask"))
    assert control.config["fedgma-control"] == "random-mask" and control.config["strategy"] == "fedgma"
    assert "**0.8000**" in selection_table(grid)


def test_headline_rows_pair_by_seed_and_correct_over_the_table(grids, tmp_path):
    tune, final, results = grids
    for run in load_grid(str(tune), results).runs:
        write_run(results / "tune" / run.name, run.config, 0.5, *SCORES[run.group.removeprefix("variant=")])
    grid = load_grid(str(final), results)
    finals = {"variant=avg-a": [0.50, 0.52, 0.49, 0.51, 0.50], "variant=gma-b": [0.60, 0.63, 0.59, 0.62, 0.61],
              "variant=fedgma-a": [0.50, 0.53, 0.48, 0.52, 0.50]}
    for run in grid.runs:
        values = finals.get(run.group, finals["variant=fedgma-a"])
        write_run(results / "final" / run.name, run.config, values[run.config["seed"] - 10])
    rows = with_holm(task_rows("tiny", grid, runs_by_group(grid, results)))
    by_method = {row.method: row for row in rows}
    assert set(by_method) == {"FedAvg", "GMA", "FedGMA", "FedGMA, random-mask control"}
    gma = by_method["GMA"]
    assert gma.comparison.n == 5 and gma.comparison.mean == pytest.approx(0.106)
    assert gma.p_holm < 0.05 and gma.p_holm >= gma.comparison.p_value
    assert by_method["FedAvg"].comparison is None
    control = by_method["FedGMA, random-mask control"]
    assert control.compared_with == "FedGMA" and control.comparison.mean == pytest.approx(0.0)
    assert gma.oracle_selected == "gma-a" and gma.oracle_mean == pytest.approx(0.506)  # re-run too, not tested
    spec = tmp_path / "headline.toml"
    spec.write_text(f'[[task]]\nname = "tiny"\ngrid = "{final}"\n')
    headline = headline_rows(results, spec)
    assert len(headline.rows) == 4 and headline.waiting == []
    assert headline.machines == [f"tiny (grid {final}): all 30 runs on one kind of machine (AMD EPYC, avx512f, "
                                 "bf16 units)"]
    table = to_markdown(headline.rows)
    assert "| +10.6 [+" in table and "nan" not in table and "across machines" not in table
    # with one fresh seed so far (a grid under way) a CI is not defined, and the table says so
    single = tmp_path / "single"
    for run in load_grid(str(tune), single).runs:
        write_run(single / "tune" / run.name, run.config, 0.5, *SCORES[run.group.removeprefix("variant=")])
    for run in load_grid(str(final), single).runs:
        if run.config["seed"] == 10:
            write_run(single / "final" / run.name, run.config, finals.get(run.group, finals["variant=fedgma-a"])[0])
    grid = load_grid(str(final), single)
    table = to_markdown(with_holm(task_rows("tiny", grid, runs_by_group(grid, single))))
    assert "[-, -] vs FedAvg" in table and "nan" not in table
    headline = headline_rows(single, spec)  # and the headline gives no verdict on a grid under way
    assert headline.waiting == [f"tiny (grid {final}): 6 of 30 runs complete; its rows are provisional and carry "
                                "no verdict"]
    assert all(row.pending == "grid incomplete" for row in headline.rows)
    assert "better" not in to_markdown(headline.rows)
    # a complete task waits for the rest of its Holm family, whose tests can still raise its corrected p-values
    second = tmp_path / "second.toml"
    second.write_text(final.read_text())
    spec.write_text(spec.read_text() + f'[[task]]\nname = "second"\ngrid = "{second}"\n')
    headline = headline_rows(results, spec)
    assert headline.waiting == [f"second (grid {second}): 0 of 30 runs complete; its rows are provisional and carry "
                                "no verdict"]
    tiny = [row for row in headline.rows if row.task == "tiny"]
    assert {row.pending for row in tiny} == {"other tasks incomplete"} and "better" not in to_markdown(tiny)
    assert "none yet (other tasks incomplete)" in to_markdown(tiny)


def test_the_headline_names_the_seeds_paired_across_kinds_of_machine(grids):
    tune, final, results = grids
    for run in load_grid(str(tune), results).runs:
        write_run(results / "tune" / run.name, run.config, 0.5, *SCORES[run.group.removeprefix("variant=")])
    avx2 = {"cpu": "AMD EPYC", "cores": 2, "vector-unit": "avx2", "bf16-units": False}
    for run in load_grid(str(final), results).runs:
        # FedAvg's seed 11 ran on another kind of machine than every other run
        moved = run.group == "variant=avg-a" and run.config["seed"] == 11
        write_run(results / "final" / run.name, run.config, 0.5 + run.config["seed"] / 1000,
                  machine=avx2 if moved else AVX512)
    grid = load_grid(str(final), results)
    rows = {row.method: row for row in with_holm(task_rows("tiny", grid, runs_by_group(grid, results)))}
    assert rows["GMA"].cross_machine == (11,) and rows["FedGMA"].cross_machine == (11,)
    assert rows["FedGMA, random-mask control"].cross_machine == ()  # compared with FedGMA: same machines
    assert "+0.0 [+0.0, +0.0] vs FedAvg; seed 11 paired across machines" in to_markdown(list(rows.values()))


def test_the_mask_table_averages_what_the_masks_recorded_over_rounds_and_seeds(grids):
    tune, final, results = grids
    for run in load_grid(str(tune), results).runs:
        write_run(results / "tune" / run.name, run.config, 0.5, *SCORES[run.group.removeprefix("variant=")])
    grid = load_grid(str(final), results)
    for run in grid.runs:
        seed = run.config["seed"]
        masks = None if run.config.get("strategy") != "fedgma" else (  # only FedGMA and its control record a mask
            lambda r, seed=seed: {"mask-density": 0.1 * (seed - 9), "mean-agreement": r / 10,
                                  "mask-density/fc.weight": 0.5, "mask-density/fc.bias": 1.0})
        write_run(results / "final" / run.name, run.config, 0.5, masks=masks)
    lines = mask_table(runs_by_group(grid, results)).splitlines()
    assert lines[0] == "| configuration | n | mask density | mean sign agreement | fc.weight | fc.bias |"
    # densities 0.1 to 0.5 over seeds 10-14: mean 0.3; agreement r/10 over rounds 1-10 (not round 0): 0.55
    assert lines[2:] == ["| fedgma-a | 5 | 0.300 | 0.550 | 0.500 | 1.000 |",
                         "| fedgma-a+random-mask | 5 | 0.300 | 0.550 | 0.500 | 1.000 |"]
    assert mask_table(runs_by_group(load_grid(str(tune), results), results)) == ""  # no run recorded a mask


def test_the_headline_quotes_every_published_table_with_its_source():
    import tomllib

    from fedgma.tools.experiments.headline import HEADLINE, published_markdown

    config = tomllib.loads(HEADLINE.read_text())
    text = published_markdown(config)
    assert len(config["published"]) == 3 and "arXiv 1907.02893" in text and "DomainBed" in text
    assert "arXiv 2106.02266" in text and "| SAND-mask, test-domain validation (oracle) | 73.0 ± 1.0 |" in text
    assert "| IRM | 66.9 ± 2.5 |" in text and "| optimum (the 25% label noise caps it) | 75.0 |" in text


def test_the_readme_headline_is_the_one_the_committed_runs_give():
    from fedgma.tools.experiments.grid import REPO, RESULTS
    from fedgma.tools.experiments.headline import readme_block, with_readme_block

    readme = (REPO / "README.md").read_text()
    rebuilt = with_readme_block(readme, readme_block(headline_rows(RESULTS)))
    assert rebuilt == readme, "README.md's headline table is stale: run `python -m fedgma.tools.experiments report`"
    with pytest.raises(ValueError, match="no headline block"):
        with_readme_block("# a README without the block\n", "table")


def test_a_selected_grid_report_draws_the_headline_figure(grids, tmp_path):
    """`report GRID` of a selected grid: OOD accuracy (95% CI bands over the fresh seeds) and mask density of each
    method's training-domain choice, one line per method in its own colour, linked from summary.md."""
    tune, final, results = grids
    for run in load_grid(str(tune), results).runs:
        write_run(results / "tune" / run.name, run.config, 0.5, *SCORES[run.group.removeprefix("variant=")])
    grid = load_grid(str(final), results)
    for run in grid.runs:
        masked = run.config.get("gma") or run.config["strategy"] == "fedgma"
        write_run(results / "final" / run.name, run.config, 0.4 + run.config["seed"] / 100,
                  masks=(lambda r: {"mask-density": 0.5 / r}) if masked else None)
    groups = runs_by_group(grid, results)
    chosen = selected_groups(with_holm(task_rows("tiny", grid, groups)), groups)
    assert [g.label for g in chosen] == ["FedAvg", "GMA", "FedGMA", "FedGMA, random-mask control"]
    assert all(len(g.runs) == 5 for g in chosen)
    out = tmp_path / "docs"
    assert main(["--results", str(results), "report", str(final), "--out", str(out)]) == 0
    assert "![OOD accuracy and mask density by round](headline.png)" in (out / "summary.md").read_text()
    assert (out / "headline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
