"""Plots people read at a glance: every figure, the committed grids' included, keeps the rules of
fedgma/tools/experiments/plots.py, and a figure that breaks one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.figure
import pytest
from conftest import REPO

from fedgma.tools.experiments.grid import available_grids, load_grid
from fedgma.tools.experiments.headline import runs_by_group, selected_groups, task_rows
from fedgma.labels import method_family
from fedgma.tools.experiments.plots import (FAMILIES, MAX_LINES, PALETTE, FigureRuleError, _pyplot, check_figure,
                                            family_colour, plot_all, plot_metric_panels)
from fedgma.tools.experiments.results import group_runs, load_runs

RESULTS = REPO / "results"


def fake_run(folder, seed, config, ood):
    rows = [{"round": r, "ood-accuracy": v, "id-accuracy": 0.8, **({"mask-density": 0.5, "mean-agreement": 0.4,
             "mask-effect": 0.1, "mask-density/w.weight": 0.5} if config.get("gma") and r else {})}
            for r, v in enumerate(ood)]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "rounds": rows,
                                                     "config": {"seed": seed, **config}}))


@pytest.fixture
def figures(monkeypatch):
    """Every figure plot_all draws, kept open instead of saved (saving is what takes the time)."""
    drawn, plt = [], _pyplot()
    close = plt.close
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    monkeypatch.setattr(plt, "close", lambda fig: None)
    yield drawn
    close("all")


def test_sixteen_configurations_become_small_multiples_with_one_colour_per_method(tmp_path, figures):
    methods = [{"strategy": "fedavgm", "server-momentum": 0.0, "server-momentum-lr": lr} for lr in (0.5, 1, 1.5, 2)]
    methods += [{"strategy": "fedyogi", "fedopt-eta": eta} for eta in (0.001, 0.003, 0.01, 0.03)]
    methods += [{"strategy": "fedgma", "p": p} for p in (0.4, 0.5, 0.6, 0.8)]
    methods += [{"strategy": "fedavg", "gma": True, "tau": tau} for tau in (0.2, 0.4, 0.6, 0.8)]
    for i, config in enumerate(methods):
        fake_run(tmp_path / f"r{i}", 0, config, [0.5, 0.2 + i / 100, 0.3, 0.4])
        if config["strategy"] == "fedyogi":  # two seeds: bands
            fake_run(tmp_path / f"r{i}-seed1", 1, config, [0.5, 0.25, 0.35, 0.45])
    plot_all(group_runs(load_runs([tmp_path])), tmp_path / "out", "grid test")
    accuracy = figures[0]
    assert accuracy._suptitle.get_text() == "Accuracy by round: grid test"
    top = accuracy.axes[:4]  # one column per method, four variants each
    assert sorted(ax.get_title() for ax in top) == ["FedAvg", "FedGMA", "FedYogi", "GMA"]
    for ax in top:
        family = ax.get_title()
        assert len(ax.get_lines()) == 4 and {line.get_color() for line in ax.get_lines()} == {family_colour(family)}
        assert len({line.get_linestyle() for line in ax.get_lines()}) == 4  # variants: one style each
        assert len(ax.collections) == 0  # variants of one method share the panel: no bands over each other
        assert all(tick == int(tick) for tick in ax.get_xticks())
    colours = [family_colour(f) for f in ("FedAvg", "FedYogi", "FedGMA", "GMA", "FedGMA, random-mask control",
                                          "FedGMA, uniform-step control", "FedAdam", "FedProx", "GMA over FedAdam")]
    assert len(set(colours)) == len(colours)  # no two methods share a colour
    caption = accuracy.texts[-1].get_text()
    assert "mean over 1 or 2 seeds" in caption and "95% CI" in caption and "several variants of one method" in caption


def test_bands_only_around_lines_with_seeds(tmp_path, figures):
    fake_run(tmp_path / "a0", 0, {"strategy": "fedavg"}, [0.5, 0.6, 0.7])
    fake_run(tmp_path / "a1", 1, {"strategy": "fedavg"}, [0.5, 0.65, 0.72])
    fake_run(tmp_path / "b0", 0, {"strategy": "fedgma"}, [0.5, 0.62, 0.74])
    plot_all(group_runs(load_runs([tmp_path])), tmp_path / "out")
    ood = figures[0].axes[0]
    assert [line.get_gid() for line in ood.get_lines()] == ["FedAvg", "FedGMA"]
    assert len(ood.collections) == 1 and ood.collections[0].get_facecolor()[0][:3] == pytest.approx(
        matplotlib.colors.to_rgb(family_colour("FedAvg")))  # FedAvg's two seeds; FedGMA has one


@pytest.mark.parametrize("broken, rule", [
    ("title", "more than one line"), ("lines", f"at most {MAX_LINES}"), ("alike", "look alike"),
    ("shared", "share the colour"), ("own", "not its colour"), ("ticks", "whole numbers")])
def test_a_figure_that_breaks_a_rule_is_refused(broken, rule):
    plt = _pyplot()
    fig, ax = plt.subplots()
    # two methods in their own colours, or: the first and the 16th family (the palette wraps there), seven lines
    # of one method, a method in a colour not its own, two lines drawn alike
    families = {"shared": [FAMILIES[0], FAMILIES[len(PALETTE)]], "lines": ["FedGMA"] * (MAX_LINES + 1),
                "alike": ["FedGMA", "FedGMA"]}.get(broken, ["FedAvg", "FedGMA"])
    for i, family in enumerate(families):
        colour = "#123456" if broken == "own" else family_colour(family)
        style = {} if broken == "alike" else {"linestyle": ["-", "--", ":", "-."][i % 4], "marker": ["", "o"][i // 4]}
        (line,) = ax.plot([0, 1, 2], [i, i, i], color=colour, **style)
        line.set_gid(family)
    ax.set_xlabel("round")
    ax.set_xticks([0, 0.5, 1] if broken == "ticks" else [0, 1, 2])
    fig.suptitle("a\nb" if broken == "title" else "one line")
    with pytest.raises(FigureRuleError, match=rule):
        check_figure(fig)
    plt.close(fig)


def test_every_committed_grid_draws_figures_that_keep_the_rules(figures):
    """The same figures as `python -m fedgma.tools.experiments report GRID` (each is checked before it is
    saved), the headline grids' included; the methods of all of them keep one colour each."""
    colours: dict[str, set[str]] = {}
    for name in available_grids():
        grid = load_grid(name, RESULTS)
        runs = load_runs([RESULTS / name]) if (RESULTS / name).exists() else []
        if not runs:
            continue
        if grid.selected:  # the headline figure of `report GRID`
            groups = runs_by_group(grid, RESULTS)
            drawn = selected_groups(task_rows(name, grid, groups), groups)
            assert plot_metric_panels(drawn, [("ood-accuracy", "OOD"), ("mask-density", "mask")], Path("unused"), name)
        else:
            drawn = group_runs(runs)
            plot_all(drawn, RESULTS.parent / "unused", f"grid {name}")
        for group in drawn:
            colours.setdefault(method_family(group.config), set()).add(family_colour(method_family(group.config)))
    assert len(figures) > 30
    assert all(len(c) == 1 for c in colours.values())
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # no two methods share a colour
