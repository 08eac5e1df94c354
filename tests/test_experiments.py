"""The experiment runner, the results table and plots, and the seed repository's preprocessing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO

from fedgma.data import client_data
from fedgma.data import test_sets as server_test_sets
from fedgma.data.coloring import color_seed_repo, color_seed_repo_test
from fedgma.tools.experiments.__main__ import main
from fedgma.tools.experiments.grid import available_grids, load_grid
from fedgma.tools.experiments.results import IS_BASELINE, group_runs, load_runs, summary_rows
from fedgma.tools.experiments.statistics import paired_comparison
from fedgma.tools.experiments.runner import INTERRUPTED, NEW, run_grid, run_state
from fedgma.checkpoint import CHECKPOINT
from fedgma.settings import ConfigError, Settings
from fedgma.training import to_input


# --- grids as data --------------------------------------------------------------------------------
def test_grid_expands_vary_in_order_with_seed_last_in_names(tmp_path):
    grid_file = tmp_path / "g.toml"
    grid_file.write_text('supernodes = 4\n[config]\nnum-server-rounds = 2\n[vary]\nseed = [0, 1]\n'
                         'strategy = ["fedavg", "fedgma"]\n[[variants]]\nname = "plain"\n[[variants]]\n'
                         'name = "p05"\np = 0.5\n')
    grid = load_grid(str(grid_file))
    assert [r.name for r in grid.runs][:4] == ["variant=plain__strategy=fedavg__seed=0",
                                               "variant=p05__strategy=fedavg__seed=0",
                                               "variant=plain__strategy=fedgma__seed=0",
                                               "variant=p05__strategy=fedgma__seed=0"]
    assert len(grid.runs) == 8 and all(r.supernodes == 4 for r in grid.runs)
    assert grid.runs[1].config == {"num-server-rounds": 2, "p": 0.5, "seed": 0, "strategy": "fedavg"}
    assert grid.runs[1].group == "variant=p05__strategy=fedavg"


def test_a_bad_grid_fails_before_anything_runs(tmp_path):
    grid_file = tmp_path / "bad.toml"
    grid_file.write_text('[vary]\nlr = [0.1, -1.0]\n')
    with pytest.raises(ConfigError, match="Run-config key 'lr'"):
        load_grid(str(grid_file))
    grid_file.write_text('[baseline]\nstrategy = "fedsgd"\n')
    with pytest.raises(ConfigError, match="Run-config key 'strategy'"):
        load_grid(str(grid_file))
    with pytest.raises(ConfigError, match="No grid 'nope'"):
        load_grid("nope")


def test_committed_grids_are_valid():
    for name in available_grids():
        grid = load_grid(name)
        assert (grid.runs or grid.pending) and grid.description, name  # a selected grid may wait for its tuning


# --- tables and plots from output folders -----------------------------------------------------------
def fake_run(folder, seed, ood, density=None, rounds_key="num-server-rounds", **config):
    rows = [{"round": r, "ood-accuracy": acc, "id-accuracy": 0.8, **({"mask-density": density,
            "mean-agreement": 0.5, "mask-density/w": density} if density is not None and r else {})}
            for r, acc in enumerate(ood)]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "status": "completed", "config": {"seed": seed, rounds_key: len(ood) - 1, "output-dir": str(folder), **config},
        "num-clients": 10, "wall-seconds": 120.0, "rounds": rows}))
    (folder / "metrics.csv").write_text("round,ood-accuracy\n")


def test_table_and_plots_from_output_folders(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "a0", 0, [0.5, 0.55, 0.65, 0.72], strategy="fedavg")
    # a1 records a key that a0 (an older release) did not have, at its default, and the round count under its old
    # name (as the committed results do): still one configuration
    fake_run(tmp_path / "runs" / "a1", 1, [0.5, 0.61, 0.62, 0.68], strategy="fedavg", rounds_key="num-rounds",
             **{"min-accepted-fraction": 0.0})
    fake_run(tmp_path / "runs" / "b0", 0, [0.5, 0.4, 0.5, 0.59], density=0.25, strategy="fedgma")
    (tmp_path / "runs" / "unfinished").mkdir()
    (tmp_path / "runs" / "unfinished" / "metrics.json").write_text(json.dumps(
        {"status": "running", "config": {"seed": 5, "strategy": "fedavg"}, "rounds": []}))
    groups = group_runs(load_runs([tmp_path / "runs"]))
    assert [(g.label, len(g.runs)) for g in groups] == [("FedAvg", 2), ("FedGMA (p 0.7, eta_s 0.0001)", 1)]
    fedavg, fedgma = summary_rows(groups)
    assert fedavg["final-ood-mean"] == pytest.approx(0.70) and fedavg["final-ood-std"] == pytest.approx(0.0282843, 1e-5)
    assert fedavg["best-ood-mean"] == pytest.approx(0.70)
    assert fedavg["rounds-to-0.6"] == pytest.approx(1.5) and fedavg["reached-0.7"] == 1
    assert fedgma["reached-0.6"] == 0 and fedgma["mask-density-mean"] == pytest.approx(0.25)
    assert fedavg["wall-minutes-mean"] == pytest.approx(2.0) and fedavg["num-clients"] == 10

    assert main(["table", str(tmp_path / "runs"), "--out", str(tmp_path / "table")]) == 0
    markdown = (tmp_path / "table" / "summary.md").read_text()
    assert fedavg["last-ood-mean"] == pytest.approx((0.605 + 0.6025) / 2)  # rounds 0 to 3: all of them here
    assert "| FedAvg | 2 | 0.7000 ± 0.0283 | 0.6038 ± 0.0018 | 0.7000 ± 0.0283 |" in markdown
    assert "| 1.5 | 3.0 (1/2) |" in markdown and "| never | never | 0.250 | - | 0.500 |" in markdown
    assert "| FedGMA (p 0.7, eta_s 0.0001) | 1 | 0.5900 | 0.4975 | 0.5900 | 0.8000 |" in markdown  # one seed: no ± 0
    assert (tmp_path / "table" / "summary.csv").read_text().startswith("configuration,n,")
    # paired with a baseline: seed 0 of fedgma against seed 0 of fedavg (0.59 - 0.72)
    fedavg, fedgma = summary_rows(groups, {"strategy": "fedavg"})
    assert fedavg["baseline"] == IS_BASELINE and fedgma["baseline"] == "strategy=fedavg"
    assert fedgma["delta-final-ood-mean"] == pytest.approx(-0.13) and fedgma["delta-final-ood-seeds"] == "0:-0.1300"
    assert main(["table", str(tmp_path / "runs"), "--out", str(tmp_path / "paired"), "--baseline", "strategy=fedavg"]) == 0
    paired = (tmp_path / "paired" / "summary.md").read_text()
    assert "| baseline |" in paired and "| -0.1300 (0:-0.1300) vs strategy=fedavg |" in paired
    # a baseline with no run is said, not silently left out
    assert main(["table", str(tmp_path / "runs"), "--out", str(tmp_path / "none"), "--baseline", "strategy=fedprox"]) == 0
    assert "no baseline run" in (tmp_path / "none" / "summary.md").read_text()
    assert "warning: no completed baseline run for 'FedAvg'" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "plots")]) == 0
    for name in ("accuracy.png", "mask.png", "mask_layers.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert main(["table", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 1



def test_report_pairs_a_grid_with_a_baseline_run_of_another_grid(tmp_path, capsys):
    grid_file = tmp_path / "masked.toml"
    grid_file.write_text('description = "masked runs"\n[config]\nstrategy = "fedgma"\n[vary]\nseed = [0]\n'
                         '[baseline]\nstrategy = "fedavg"\n')
    results = tmp_path / "results"
    fake_run(results / "masked" / "seed=0", 0, [0.5, 0.59], density=0.25, strategy="fedgma")
    fake_run(results / "other-grid" / "seed=0", 0, [0.5, 0.72], strategy="fedavg")
    fake_run(results / "other-grid" / "seed=1", 1, [0.5, 0.70], strategy="fedgma")  # not the grid's run
    assert main(["--results", str(results), "report", str(grid_file), "--out", str(tmp_path / "docs")]) == 0
    table = (tmp_path / "docs" / "summary.md").read_text()
    assert table.startswith("**masked runs**") and "| -0.1300 (0:-0.1300) vs strategy=fedavg |" in table
    assert "1 runs in 1 configurations" in capsys.readouterr().out  # only the grid's own run is tabled


def test_dp_settings_of_a_run_without_dp_neither_name_nor_separate_it(tmp_path):
    """A run without DP ignores dp-epsilon: its label leaves it out and it is the baseline of every epsilon."""
    for seed in (0, 1):
        fake_run(tmp_path / f"none{seed}", seed, [0.5, 0.7], strategy="fedavg", dp="none", **{"dp-epsilon": 0.5})
        fake_run(tmp_path / f"local{seed}", seed, [0.5, 0.4 + seed / 10], strategy="fedavg", dp="local",
                 **{"dp-epsilon": 0.99})
    groups = group_runs(load_runs([tmp_path]))
    assert sorted(g.label for g in groups) == ["FedAvg, dp local, dp-epsilon 0.99", "FedAvg, dp none"]
    rows = {row["configuration"]: row for row in summary_rows(groups, {"dp": "none"})}
    assert rows["FedAvg, dp none"]["baseline"] == IS_BASELINE
    assert rows["FedAvg, dp local, dp-epsilon 0.99"]["delta-final-ood-seeds"] == "0:-0.3000 1:-0.2000"


def test_config_command_joins_a_file_and_overrides(capsys):
    assert main(["config", str(REPO / "configs" / "seed-repo.toml"), "output-dir=/tmp/x", "resume=true"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "num-server-rounds=50" in printed and "output-dir='/tmp/x'" in printed and printed.endswith("resume=true")
    assert main(["config", str(REPO / "configs" / "seed-repo.toml"), "lr=abc"]) == 2


# --- the runner reuses identical runs of other grids -----------------------------------------------
class RecordingFlower:
    """Stands in for LocalFlower: records what would have run, runs nothing."""

    def __init__(self):
        self.output_dirs = []

    def run(self, app_dir, config, supernodes, cpus_per_client, **kwargs):
        self.output_dirs.append(config["output-dir"])
        return SimpleNamespace(output="", returncode=0)


class FailingOnceFlower(RecordingFlower):
    """A Flower run that fails at round 1 with a checkpoint (every run, if ``always``), then completes."""

    def __init__(self, always=False):
        super().__init__()
        self.always, self.resumed = always, []

    def run(self, app_dir, config, supernodes, cpus_per_client, **kwargs):
        super().run(app_dir, config, supernodes, cpus_per_client)
        self.resumed.append(bool(config.get("resume")))
        folder = Path(config["output-dir"])
        folder.mkdir(parents=True, exist_ok=True)
        done = not self.always and len(self.resumed) > 1
        rounds = [{"round": r, "ood-accuracy": 0.5} for r in range(4 if done else 2)]
        (folder / "metrics.json").write_text(json.dumps({"status": "completed" if done else "running",
                                                         "config": config, "rounds": rounds}))
        (folder / CHECKPOINT).write_bytes(b"model")
        return SimpleNamespace(output="heartbeat expired", returncode=1)


def test_runner_resumes_a_run_that_failed_midway_before_moving_on(tmp_path, capsys):
    grid_file = tmp_path / "g.toml"
    grid_file.write_text('supernodes = 3\n[config]\nnum-server-rounds = 3\n[vary]\nseed = [0]\n')
    flower = FailingOnceFlower()
    outcomes = run_grid(load_grid(str(grid_file)), tmp_path / "r", flower=flower)
    assert [o.status for o in outcomes] == ["completed"] and flower.resumed == [False, True]
    assert "resuming from its checkpoint (retry 1 of 1)" in capsys.readouterr().out
    # a run that keeps failing is tried 1 + retries times, then left interrupted for the next run of the grid
    stubborn = FailingOnceFlower(always=True)
    outcomes = run_grid(load_grid(str(grid_file)), tmp_path / "s", flower=stubborn, retries=2)
    assert [o.status for o in outcomes] == ["running"] and stubborn.resumed == [False, True, True]
    assert "flwr exited with code 1" in capsys.readouterr().err
    assert run_state(tmp_path / "s" / "g" / "seed=0", 3) == INTERRUPTED
    assert run_state(tmp_path / "nothing", 3) == NEW


def test_runner_copies_a_run_equal_to_a_completed_run_of_another_grid(tmp_path, capsys):
    grid_file = tmp_path / "b.toml"
    grid_file.write_text('supernodes = 10\n[config]\nnum-server-rounds = 3\n[vary]\nseed = [0, 1]\n')
    results = tmp_path / "results"
    stored = Settings.from_run_config({"num-server-rounds": 3}).to_run_config()
    del stored["seed"]
    fake_run(results / "a" / "strategy=fedgma__seed=0", 0, [0.5, 0.6, 0.7, 0.8], **stored)
    fake_run(results / "a" / "p=0.5__seed=1", 1, [0.5, 0.6, 0.7, 0.8], **(stored | {"p": 0.5}))
    flower = RecordingFlower()
    outcomes = run_grid(load_grid(str(grid_file)), results, flower=flower)

    assert [o.status for o in outcomes] == ["reused", "failed: no metrics.json (see the output above)"]
    copied = json.loads((results / "b" / "seed=0" / "metrics.json").read_text())
    assert copied["reused-from"] == "a/strategy=fedgma__seed=0" and copied["rounds"][-1]["ood-accuracy"] == 0.8
    assert flower.output_dirs == [str(results / "b" / "seed=1")]  # seed 1 differs from a's run in p: it runs
    assert "its metrics copied, not run again" in capsys.readouterr().out
    assert (results / "b" / "seed=0" / "metrics.csv").read_text() == "round,ood-accuracy\n"
    # --no-reuse runs every run
    assert run_grid(load_grid(str(grid_file)), tmp_path / "other", flower=flower, reuse=False)
    assert len(flower.output_dirs) == 3


def test_run_command_queues_grids_in_order_and_checks_them_all_first(tmp_path, monkeypatch, capsys):
    import fedgma.tools.experiments.__main__ as cli

    ran = []
    monkeypatch.setattr(cli, "LocalFlower", lambda: contextlib.nullcontext("flower"))
    monkeypatch.setattr(cli, "run_grid", lambda grid, *args, **kwargs: ran.append((grid.name, kwargs["flower"])) or [])
    assert main(["--results", str(tmp_path), "run", "smoke", "seed-repo", "--data-dir", str(tmp_path)]) == 0
    assert ran == [("smoke", "flower"), ("seed-repo", "flower")]  # one local Flower for the whole queue
    assert main(["run", "smoke", "nope"]) == 2 and len(ran) == 2  # a bad name stops it before any run
    assert "No grid 'nope'" in capsys.readouterr().err


# --- the seed repository's preprocessing -------------------------------------------------------------
def seed_repo_picture(image: np.ndarray, red: bool) -> np.ndarray:
    """What the seed repository does to one image, written out literally."""
    zero = np.zeros_like(image)
    rgb = np.stack((image, zero, zero) if red else (zero, image, zero), axis=2)  # (28, 28, 3)
    return rgb.reshape((3, 28, 28))  # its reshape, not a permute


def test_seed_repo_colouring_matches_hand_built_pictures():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    digits = np.array([3, 5, 7, 5])
    never, always = color_seed_repo(images, digits, 0.0, rng), color_seed_repo(images, digits, 1.0, rng)
    expected_never = [True, False, False, False]  # 0-4 red, 6-9 green, 5 green
    expected_always = [False, False, True, False]  # swapped, but 5 stays green
    for i in range(4):
        assert np.array_equal(never[0][i], seed_repo_picture(images[i], expected_never[i]))
        assert np.array_equal(always[0][i], seed_repo_picture(images[i], expected_always[i]))
    assert list(never[1]) == [0, 1, 1, 1]
    test_pictures, _ = color_seed_repo_test(images, digits)
    for i, red in enumerate([False, True, True, True]):  # every colour reversed: 0-4 green, 5-9 red
        assert np.array_equal(test_pictures[i], seed_repo_picture(images[i], red))
    # The reshape scrambles: plane 0 of a red picture is not the digit, it interleaves pixels and zeros.
    assert not np.array_equal(never[0][0][0], images[0])
    assert np.array_equal(never[0][0].reshape(-1)[0::3], images[0].reshape(-1))


def test_seed_repo_inputs_are_raw_pixels(mnist_dir):
    s = Settings.from_run_config({"data-dir": str(mnist_dir), "preprocessing": "seed-repo",
                                  "max-client-examples": 20, "max-test-examples": 50})
    data = client_data(s, 0, 10)
    assert data.pixel_divisor == 1.0 and to_input(torch.from_numpy(data.images), data.pixel_divisor).max() > 200
    assert server_test_sets(s)["ood"].flip == 1.0
    clean = client_data(Settings.from_run_config({"data-dir": str(mnist_dir), "max-client-examples": 20}), 0, 10)
    assert to_input(torch.from_numpy(clean.images), clean.pixel_divisor).max() <= 1.0
    with pytest.raises(ConfigError, match="'preprocessing' = 'seed-repo' needs task='binary'"):
        Settings.from_run_config({"preprocessing": "seed-repo", "task": "multiclass"})


def test_labels_name_the_method_and_only_its_own_knobs():
    from fedgma.labels import configuration_label, method_label
    from fedgma.settings import DEFAULT_RUN_CONFIG

    def label(**keys):
        return method_label(DEFAULT_RUN_CONFIG | keys)

    assert label(strategy="fedavg") == "FedAvg"  # not "p=0.7, server-lr=0.0001" of a mask FedAvg does not have
    assert label(strategy="fedgma", p=0.22, **{"server-lr": 1.0, "fedgma-direction": "pseudo-gradient"}) == \
        "FedGMA (p 0.22, eta_s 1, pseudo-gradient)"
    assert label(strategy="fedavg", gma=True) == "GMA (soft, tau 0.4)"
    assert label(strategy="fedadam", gma=True, mask="hard") == "GMA (hard, tau 0.4) over FedAdam (eta 0.01)"
    assert label(strategy="fedavgm", **{"server-momentum": 0.0, "server-momentum-lr": 2.0}) == "FedAvg (server lr 2)"
    assert configuration_label(DEFAULT_RUN_CONFIG | {"strategy": "fedavg", "partitioner": "iid"},
                               ["strategy", "partitioner"]) == "FedAvg, partitioner iid"


def test_runner_says_runs_done_of_the_total_and_the_time_left(tmp_path, capsys):
    grid_file = tmp_path / "g.toml"
    grid_file.write_text('supernodes = 3\n[config]\nnum-server-rounds = 3\n[vary]\nseed = [0, 1]\n')
    run_grid(load_grid(str(grid_file)), tmp_path / "r", flower=FailingOnceFlower())
    lines = [line for line in capsys.readouterr().out.splitlines() if "runs done" in line]
    assert len(lines) == 2 and "completed in" in lines[0]
    assert "1 of 2 runs done, 0:00:00 left at this pace" in lines[0] and "2 of 2 runs done, 0:00:00 left" in lines[1]


def test_compare_pairs_by_seed_against_plain_fedavg(tmp_path, capsys):
    """`compare FOLDERS` (baseline fedavg): per setting, each method minus FedAvg of the same seed, with CI and p;
    'best' never counts round 0 (here the untrained model's 0.9)."""
    for seed, (base, masked) in enumerate([(0.60, 0.65), (0.62, 0.66), (0.58, 0.64)]):
        fake_run(tmp_path / "runs" / f"avg{seed}", seed, [0.9, 0.5, base], strategy="fedavg")
        fake_run(tmp_path / "runs" / f"gma{seed}", seed, [0.9, 0.55, masked], density=0.5, strategy="fedavg", gma=True)
    fake_run(tmp_path / "runs" / "iid", 0, [0.9, 0.5, 0.7], strategy="fedgma", partitioner="iid")  # no FedAvg there
    assert main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    gma = next(line for line in table.splitlines() if line.startswith("| GMA"))
    difference = paired_comparison({0: 0.65, 1: 0.66, 2: 0.64}, {0: 0.60, 1: 0.62, 2: 0.58})
    shown = f"{difference.mean:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}] | {difference.p_value:.3g}"
    assert f"| 3 | {shown} |" in gma
    assert "| 0.6500 | 0.6500 | FedAvg, partitioner pathological |" in gma  # best of rounds 1+, not round 0's 0.9
    assert "| no run with the same setting | 0 | - |" in table
    assert "warning: no FedAvg run with the setting of 'FedGMA" in capsys.readouterr().err
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # two FedAvg configurations in one setting: say so, and how to name one
    fake_run(tmp_path / "two" / "a", 0, [0.5, 0.6], strategy="fedavgm", **{"server-momentum": 0.0})
    fake_run(tmp_path / "two" / "b", 0, [0.5, 0.6], strategy="fedavgm", **{"server-momentum": 0.0,
                                                                            "server-momentum-lr": 2.0})
    fake_run(tmp_path / "two" / "c", 0, [0.5, 0.7], strategy="fedgma")
    assert main(["compare", str(tmp_path / "two"), "--out", str(tmp_path / "x")]) == 2
    assert "name one with KEY=VALUE" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "two"), "--out", str(tmp_path / "x"), "--baseline", "fedavg",
                 "server-momentum-lr=2.0"]) == 0
