"""End to end through the real Flower simulation engine (``flwr run``, Ray), tiny configuration.

Every test here shares one local SuperLink started by ``flwr run`` in an isolated
FLWR_HOME and Ray temp dir on free 127.0.0.1 ports (``LocalFlower``), which stops
it and everything it started, by PID, afterwards.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ONE_ACTOR, REPO, mlflow_run, tensorboard_scalars, tracking_env, wandb_records

from fedgma.tools.local_flower import LocalFlower
from fedgma.model import build_model

pytestmark = pytest.mark.simulation


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    # its own short /tmp folder (Ray socket paths must stay under 108 bytes); W&B's caches in a temporary one
    with LocalFlower(env=tracking_env(tmp_path_factory.mktemp("tracking-home"))) as local:
        yield local


def test_simulation_runs_and_writes_results(flower, mnist_dir, tmp_path):
    out = tmp_path / "out"
    done = flower.run(REPO, {"data-dir": str(mnist_dir), "num-server-rounds": 2, "max-client-examples": 150,
                             "max-test-examples": 300, "fraction-evaluate": 1.0, "output-dir": str(out),
                             "train-validation-examples": 200, "test-validation-examples": 100,
                             "tracking": "tensorboard,wandb,mlflow"}, 3)
    assert " [round 2/2] " in done.output and " elapsed, 0:00:00 left | OOD acc " in done.output, done.output[-5000:]
    # Flower's own round lines and its final dump are off (verbose=false): one line per round is the app's
    assert "Aggregated MetricRecord" not in done.output and "Final results" not in done.output
    assert flower.runs()[0]["status"] == "finished:completed"

    report = json.loads((out / "metrics.json").read_text())
    assert report["status"] == "completed"
    assert report["config"]["strategy"] == "fedgma" and report["config"]["num-server-rounds"] == 2
    assert report["versions"]["flwr"].startswith("1.")
    assert report["machine"]["cores"] >= 1 and report["machine"]["vector-unit"]  # wall times are read with it
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for row in rounds[1:]:
        assert row["replies-accepted"] == 3 and row["replies-failed"] == 0 and row["replies-rejected"] == 0
        assert 0 <= row["ood-accuracy"] <= 1 and 0 <= row["id-accuracy"] <= 1
        assert 0 <= row["train-val-accuracy"] <= 1 and 0 <= row["test-val-accuracy"] <= 1  # model selection
        assert 0 <= row["mask-density"] <= 1 and "train-loss" in row and "local-accuracy" in row
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("round,")
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    model = build_model("binary")
    model.load_state_dict(torch.load(out / "model.pt"))  # the final model is a loadable CNN state dict

    # The same rounds in every tracking tool, read back with the tool's own reader (tests/test_tracking.py
    # checks the rest of what they hold)
    ood = {row["round"]: row["ood-accuracy"] for row in rounds}
    assert tensorboard_scalars(out / "tensorboard")["ood-accuracy"] == pytest.approx(ood)
    client, run = mlflow_run(out / "mlflow")
    assert run.info.status == "FINISHED"
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "mask-density")} == pytest.approx(
        {row["round"]: row["mask-density"] for row in rounds[1:]})
    history = [r["history"] for r in wandb_records(out) if r["type"] == "history"]
    assert {h["step"].get("num", 0): h["item"]["ood-accuracy"] for h in history} == pytest.approx(ood)


def test_bad_run_config_value_fails_before_round_one(flower):
    done = flower.run(REPO, {"strategy": "fedfoo"}, 2, ONE_ACTOR)
    latest = flower.runs()[0]
    assert latest["status"] == "finished:failed", latest
    assert "Run-config key 'strategy' is 'fedfoo'; allowed values" in latest["status-details"]
    assert "[ROUND 1/" not in done.output


def test_unknown_run_config_key_is_refused_by_flower(flower):
    """Flower checks keys against pyproject itself and starts no run (its message does not name the key)."""
    before = len(flower.runs())
    done = flower.run(REPO, {"stratgy": "fedavg"}, 2, ONE_ACTOR)
    assert "Invalid run configuration" in done.output
    assert len(flower.runs()) == before
