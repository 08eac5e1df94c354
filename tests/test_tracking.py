"""Tracking: a short run's rounds, run config and model reach TensorBoard, W&B (offline) and MLflow, read back
with each tool's own reader; a missing package or a misspelt tool stops the run before round 1."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import mlflow_run, tensorboard_scalars, wandb_records

from fedgma import tracking
from fedgma.model import build_model
from fedgma.outputs import RunRecorder
from fedgma.settings import ConfigError, Settings, tracking_tools

ALL = "tensorboard,wandb,mlflow"


def rows(rounds: int) -> list[dict]:
    """A run's rows as CentralEvaluation records them: accuracies, client metrics, mask diagnostics, text."""
    found = [{"round": 0, "ood-accuracy": 0.5, "id-accuracy": 0.5, "seconds": 1.0, "time": 1.7e9}]
    for r in range(1, rounds + 1):
        found.append({"round": r, "ood-accuracy": 0.5 + r / 10, "id-accuracy": 0.6 + r / 20, "seconds": 2.0,
                      "time": 1.7e9 + r, "train-loss": 1.0 / r, "mask-density": 0.25 * r,
                      "mask-density/fc.weight": 0.1 * r, "replies-accepted": 3, "replies-failed": 0,
                      "outcome": "aggregated", "reasons": []})
    return found


def recorded_run(folder, tracking: str = ALL, rounds: int = 2, **keys) -> RunRecorder:
    settings = Settings.from_run_config({"tracking": tracking, "num-server-rounds": rounds, **keys})
    recorder = RunRecorder(folder, settings)
    for row in rows(rounds):
        recorder.record_round(row)
    return recorder


def test_a_short_run_reaches_every_tool_and_reads_back(tmp_path, tracking_home):
    folder = tmp_path / "run"
    recorder = recorded_run(folder)
    recorder.finish(build_model("binary").state_dict())
    expected = {row["round"]: row["ood-accuracy"] for row in rows(2)}

    scalars = tensorboard_scalars(folder / "tensorboard")
    assert scalars["ood-accuracy"] == pytest.approx(expected)
    assert scalars["mask-density/fc.weight"] == pytest.approx({1: 0.1, 2: 0.2})  # a layer's diagnostic
    assert scalars["replies-accepted"] == {1: 3.0, 2: 3.0} and "outcome" not in scalars and "time" not in scalars

    client, run = mlflow_run(folder / "mlflow")
    assert run.info.status == "FINISHED" and run.info.run_id == recorder.report["tracking"]["mlflow-run-id"]
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "ood-accuracy")}
    assert history == pytest.approx(expected)
    assert run.data.params["num-server-rounds"] == "2" and run.data.params["tracking"] == ALL  # the resolved config
    assert run.data.params["strategy"] == "fedgma"
    artifacts = {a.path: a for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "run-config.json"} <= set(artifacts)
    model = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path))
    build_model("binary").load_state_dict(torch.load(model))  # the final model, loadable

    records = wandb_records(folder)
    history = {r["history"]["step"].get("num", 0): r["history"]["item"] for r in records if r["type"] == "history"}
    assert {step: item["ood-accuracy"] for step, item in history.items()} == pytest.approx(expected)
    assert history[2]["train-loss"] == pytest.approx(0.5) and history[2]["mask-density"] == pytest.approx(0.5)
    (start,) = [r["run"] for r in records if r["type"] == "run"]
    assert start["config"]["update"]["num-server-rounds"] == 2 and start["project"] == "fedgma"
    assert start["run_id"] == recorder.report["tracking"]["wandb-run-id"]
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert artifact["type"] == "model" and [c["path"] for c in artifact["manifest"]["contents"]] == ["model.pt"]
    assert [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"] == [0]
    assert json.loads((folder / "metrics.json").read_text())["tracking"] == recorder.report["tracking"]


def test_a_resumed_run_continues_its_mlflow_run_and_a_failed_one_says_so(tmp_path, tracking_home):
    folder = tmp_path / "run"
    first = recorded_run(folder, tracking="mlflow")
    first.set_status("failed: interrupted")
    _, run = mlflow_run(folder / "mlflow")
    assert run.info.status == "FAILED"

    settings = Settings.from_run_config({"tracking": "mlflow", "num-server-rounds": 3})
    resumed = RunRecorder(folder, settings, rows=first.rows, report=first.summary())
    resumed.record_round(rows(3)[-1])
    resumed.finish(build_model("binary").state_dict())
    client, run = mlflow_run(folder / "mlflow")  # still one run
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "ood-accuracy")] == [0, 1, 2, 3]


def test_no_tracking_writes_no_tool_files(tmp_path):
    folder = tmp_path / "run"
    recorded_run(folder, tracking="none").finish(build_model("binary").state_dict())
    assert sorted(p.name for p in folder.iterdir()) == ["accuracy.png", "metrics.csv", "metrics.json", "model.pt"]
    assert "tracking" not in json.loads((folder / "metrics.json").read_text())


def test_a_missing_package_is_a_configuration_error_naming_the_key(tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"'tracking' names 'wandb', but the package\(s\) wandb are not installed"):
        RunRecorder(tmp_path / "run", Settings.from_run_config({"tracking": "tensorboard,wandb"}))
    assert not (tmp_path / "run" / "tensorboard").exists()  # checked before any tool starts


@pytest.mark.parametrize("value, tools", [("none", ()), ("mlflow", ("mlflow",)),
                                          (" tensorboard , wandb,tensorboard", ("tensorboard", "wandb"))])
def test_tracking_values(value, tools):
    assert tracking_tools(value) == tools


def test_a_misspelt_tool_names_the_closest_one():
    with pytest.raises(ConfigError, match="'tracking' names 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        Settings.from_run_config({"tracking": "mlflow,tensorbord"})
