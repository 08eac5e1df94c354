"""The first run beside its baseline (fedgma/beside.py): the partner check, the summary and the figure."""

import json
import tomllib

import pytest
from conftest import REPO
from PIL import Image

from fedgma.beside import draw, next_command, partner_report, run_label, summary
from fedgma.settings import ConfigError, Settings

FIRST = {"task": "irm", "seed": 10, "num-server-rounds": 3, "strategy": "fedgma", "p": 0.8, "server-lr": 0.5,
         "fedgma-direction": "pseudo-gradient"}


def rows(*accuracies):
    return [{"round": r, "ood-accuracy": a} for r, a in enumerate(accuracies)]


def finished_run(folder, config, accuracies, status="completed"):
    folder.mkdir(parents=True)
    report = {"status": status, "config": Settings.from_run_config(config).to_run_config(), "rounds": rows(*accuracies)}
    (folder / "metrics.json").write_text(json.dumps(report))
    return folder


def baseline(tmp_path, **changes):
    return Settings.from_run_config({"task": "irm", "seed": 10, "num-server-rounds": 3, "strategy": "fedavgm",
                                     "server-momentum": 0.0, "server-momentum-lr": 0.5,
                                     "compare-with": str(tmp_path / "first")} | changes)


def test_the_baseline_is_drawn_beside_its_first_run_and_the_summary_says_who_ended_higher(tmp_path):
    finished_run(tmp_path / "first", FIRST, [0.5, 0.2, 0.22, 0.234])
    settings = baseline(tmp_path)
    partner = partner_report(settings)
    mine = rows(0.5, 0.15, 0.16, 0.162)
    lines = summary(settings, mine, partner)
    assert lines[0].startswith("Final OOD accuracy: FedGMA (p 0.8, eta_s 0.5, pseudo-gradient) 0.234, FedAvg (server lr 0.5) "
                               "0.162, a difference of +0.072; same seed 10")
    assert "One seed: FedGMA (p 0.8, eta_s 0.5, pseudo-gradient) ended higher here" in lines[1]
    behind = {**partner, "rounds": rows(0.5, 0.2)}
    assert "FedAvg (server lr 0.5) ended higher" in summary(settings, rows(0.5, 0.3), behind)[1]
    draw(settings, mine, partner, tmp_path / "beside.png")
    assert Image.open(tmp_path / "beside.png").size[0] > 500


def test_a_partner_that_is_missing_unfinished_or_differs_is_refused_before_round_1(tmp_path):
    with pytest.raises(ConfigError, match="'compare-with'.*does not exist"):
        partner_report(baseline(tmp_path))
    finished_run(tmp_path / "first", FIRST, [0.5, 0.2], status="running")
    with pytest.raises(ConfigError, match="not completed"):
        partner_report(baseline(tmp_path))
    (tmp_path / "first" / "metrics.json").unlink()
    (tmp_path / "first").rmdir()
    finished_run(tmp_path / "first", FIRST, [0.5, 0.2, 0.22, 0.234])
    with pytest.raises(ConfigError, match="differs in 'seed' \\(10 there, 11 here\\)"):
        partner_report(baseline(tmp_path, seed=11))
    assert partner_report(Settings.from_run_config({})) is None


def test_the_first_run_prints_its_baselines_command():
    assert next_command(Settings.from_run_config({})) is None
    command = next_command(Settings.from_run_config({"baseline-config": "configs/first-run-baseline.toml",
                                                     "min-available-nodes": 10}))
    assert "flwr run . --stream --run-config configs/first-run-baseline.toml" in command
    assert "num-supernodes=10" in command
    assert run_label({"strategy": "fedadam", "gma": True, "tau": 0.8}) == "GMA (soft, tau 0.8) over FedAdam (eta 0.01)"


def test_the_first_run_configs_are_one_experiment_apart_by_the_method_only():
    first = tomllib.loads((REPO / "configs" / "first-run.toml").read_text())
    second = tomllib.loads((REPO / "configs" / "first-run-baseline.toml").read_text())
    Settings.from_run_config(first), Settings.from_run_config(second)  # both valid
    shared = {k: v for k, v in first.items() if k in second and second[k] == v}
    assert {"seed", "task", "num-server-rounds", "environments"} <= set(shared)
    assert second["compare-with"] == first["output-dir"]
    assert first["baseline-config"] == "configs/first-run-baseline.toml"
