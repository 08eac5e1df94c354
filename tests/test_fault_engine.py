"""Faults where the engine matters: a ClientApp that raises, float64 and NaN replies, evaluate
replies gone bad with fraction-evaluate = 1, a round where every client fails. Through the real
simulation engine with tests/fault_app/faulty_client.py as the ClientApp."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import REPO

from fedgma.tools.local_flower import LocalFlower

pytestmark = pytest.mark.simulation


@pytest.fixture
def faulty_app(tmp_path):
    """This app with the fault-injecting ClientApp (same run-config keys, so Flower accepts the same config)."""
    app = tmp_path / "faulty-app"
    app.mkdir()
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject = re.sub(r'clientapp = ".*"', 'clientapp = "faulty_client:app"', pyproject)
    (app / "pyproject.toml").write_text(pyproject.replace('name = "fedgma"', 'name = "fedgma-faulty"'))
    shutil.copy(REPO / "tests" / "fault_app" / "faulty_client.py", app)
    return app


def test_faults_are_counted_the_model_is_kept_and_the_run_completes(faulty_app, mnist_dir, tmp_path):
    out = tmp_path / "out"
    config = {"data-dir": str(mnist_dir), "num-server-rounds": 3, "max-client-examples": 150, "max-test-examples": 300,
              "min-available-nodes": 4, "fraction-evaluate": 1.0, "output-dir": str(out), "strategy": "fedadam",
              "gma": True}
    with LocalFlower() as flower:  # its own short /tmp folder: Ray socket paths must stay under 108 bytes
        done = flower.run(faulty_app, config, 4)
        assert flower.runs()[0]["status"] == "finished:completed", done.output[-6000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["status"] == "completed"
    first, second, third = report["rounds"][1:]
    assert (first["replies-accepted"], first["replies-failed"], first["replies-rejected"]) == (2, 1, 1)
    reasons = "\n".join(first["reasons"])
    assert "injected crash in train" in reasons
    assert "has dtype float64, expected float32" in reasons
    assert (first["evaluate-replies-accepted"], first["evaluate-replies-failed"],
            first["evaluate-replies-rejected"]) == (2, 1, 1)
    assert "metric 'local-accuracy' is not finite" in "\n".join(first["evaluate-reasons"])
    # Round 2: every client crashed; the global model is kept (same evaluation as after round 1).
    assert (second["replies-accepted"], second["replies-failed"]) == (0, 4)
    assert second["outcome"].startswith("kept the previous model: 0 of 4 replies accepted")
    assert (second["ood-accuracy"], second["ood-loss"]) == (first["ood-accuracy"], first["ood-loss"])
    assert (third["replies-accepted"], third["outcome"]) == (4, "aggregated")
    assert third["ood-loss"] != second["ood-loss"]
