"""End to end through the real Flower simulation engine (``flwr run``, Ray), tiny configuration.

Every test here shares one local SuperLink started by ``flwr run`` in an isolated
FLWR_HOME and Ray temp dir on free 127.0.0.1 ports, and stops it (and everything
it started) by PID afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from fedgma.model import build_model
from fedgma.bench.processes import free_port, stop_tree_and_mentions

pytestmark = pytest.mark.simulation
FLWR = str(Path(sys.executable).with_name("flwr"))


@pytest.fixture(scope="module")
def flower_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("flwr")
    env = os.environ | {
        "FLWR_HOME": str(home / "home"), "RAY_TMPDIR": str(home / "ray"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        # flwr starts flower-superlink from PATH: use this environment's, activated or not
        "PATH": f"{Path(FLWR).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    (home / "ray").mkdir()
    try:
        yield home, env
    finally:
        stop_tree_and_mentions(str(home))


def flwr_run(flower_env, run_config: str, supernodes: int = 3) -> subprocess.CompletedProcess:
    home, env = flower_env
    return subprocess.run([FLWR, "run", str(REPO), "--stream", "--run-config", run_config, "--federation-config",
                           f"num-supernodes={supernodes} client-resources-num-cpus=1"],
                          cwd=home, env=env, capture_output=True, text=True, timeout=400)


def runs(flower_env) -> list[dict]:
    """``flwr list`` of the test SuperLink, newest run first."""
    _, env = flower_env
    listing = subprocess.run([FLWR, "list", "--format", "json"], cwd=flower_env[0], env=env, capture_output=True,
                             text=True, timeout=60)
    return sorted(json.loads(listing.stdout)["runs"], key=lambda run: run["pending-at"], reverse=True)


def test_simulation_runs_and_writes_results(flower_env, mnist_dir, tmp_path):
    out = tmp_path / "out"
    done = flwr_run(flower_env, f"data-dir='{mnist_dir}' num-rounds=2 max-client-examples=150 "
                                f"max-test-examples=300 fraction-evaluate=1.0 output-dir='{out}'")
    assert "[round 2/2] OOD acc" in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    assert runs(flower_env)[0]["status"] == "finished:completed"

    report = json.loads((out / "metrics.json").read_text())
    assert report["status"] == "completed"
    assert report["config"]["strategy"] == "fedgma" and report["config"]["num-rounds"] == 2
    assert report["versions"]["flwr"].startswith("1.")
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for row in rounds[1:]:
        assert row["replies-accepted"] == 3 and row["replies-failed"] == 0 and row["replies-rejected"] == 0
        assert 0 <= row["ood-accuracy"] <= 1 and 0 <= row["id-accuracy"] <= 1
        assert 0 <= row["mask-density"] <= 1 and "train-loss" in row and "local-accuracy" in row
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("round,")
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    model = build_model(1)
    model.load_state_dict(torch.load(out / "model.pt"))  # the final model is a loadable CNN state dict


def test_bad_run_config_value_fails_before_round_one(flower_env):
    done = flwr_run(flower_env, "strategy='fedfoo'", supernodes=2)
    latest = runs(flower_env)[0]
    assert latest["status"] == "finished:failed", latest
    assert "Run-config key 'strategy' is 'fedfoo'; allowed values" in latest["status-details"]
    assert "[ROUND 1/" not in done.stdout + done.stderr


def test_unknown_run_config_key_is_refused_by_flower(flower_env):
    """Flower checks keys against pyproject itself and starts no run (its message does not name the key)."""
    before = len(runs(flower_env))
    done = flwr_run(flower_env, "stratgy='fedavg'", supernodes=2)
    assert "Invalid run configuration" in done.stdout + done.stderr
    assert len(runs(flower_env)) == before
