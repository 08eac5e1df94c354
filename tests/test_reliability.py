"""Runs that survive: same seed, same result; interrupted and resumed equals done in one go.

Through the real simulation engine (``flwr run``, Ray, 6 virtual clients of
which 3, sampled reproducibly, train in each round), for FedGMA and for GMA over FedAdam (whose server moments must
survive the interruption).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import REPO

from fedgma.tools.local_flower import LocalFlower
from fedgma.checkpoint import load_checkpoint
from fedgma.settings import ConfigError

pytestmark = pytest.mark.simulation

TIMING = ("seconds", "time")  # wall-clock fields, the only ones allowed to differ


def rounds_without_timing(folder):
    report = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k not in TIMING} for row in report["rounds"]]


#: Virtual clients of these runs; half of them are sampled each round (reproducible sampling, the default).
NODES = 6


def tiny(mnist_dir, out, **extra):
    return {"data-dir": str(mnist_dir), "num-server-rounds": 4, "max-client-examples": 120, "max-test-examples": 200,
            "min-available-nodes": NODES, "fraction-train": 0.5, "fraction-evaluate": 1.0, "output-dir": str(out),
            **extra}


@pytest.fixture(scope="module")
def flower():
    with LocalFlower() as local:  # its own short /tmp folder: Ray socket paths must stay under 108 bytes
        yield local


def checkpoint_round(folder) -> int:
    try:
        return load_checkpoint(folder).round
    except ConfigError:  # none written yet
        return -1


@pytest.mark.parametrize("strategy", [{"strategy": "fedgma"}, {"strategy": "fedadam", "gma": True}],
                         ids=["fedgma", "gma-fedadam"])
def test_same_seed_same_result_and_resume_equals_one_go(flower, mnist_dir, tmp_path, strategy):
    """Same seed, same result, and a resumed run equals one go: the interrupted run is a second run of the same
    seed (its rounds up to the kill must equal the first run's), the resumed one writes the remaining rounds and
    the final model, which must be byte-identical to the first run's."""
    first, interrupted = tmp_path / "first", tmp_path / "interrupted"
    done = flower.run(REPO, tiny(mnist_dir, first, **strategy), NODES)
    assert json.loads((first / "metrics.json").read_text())["status"] == "completed", done.output[-4000:]
    rounds = rounds_without_timing(first)[1:]
    assert [row["replies-accepted"] for row in rounds] == [3] * 4  # half of the clients, sampled
    assert {row["sampling-order"] for row in rounds} == {"simulation registration"}  # no client was asked
    assert {row["aggregation"] for row in rounds} == {"running sums"}  # each reply folded in as it came

    # Killed by PID right after round 2 is checkpointed, then resumed.
    runner = threading.Thread(target=flower.run, args=(REPO, tiny(mnist_dir, interrupted, **strategy), NODES))
    runner.start()
    deadline = time.time() + 300
    while checkpoint_round(interrupted) < 2 and time.time() < deadline and runner.is_alive():
        time.sleep(0.02)
    flower.kill()
    runner.join()
    killed_at = checkpoint_round(interrupted)
    assert 2 <= killed_at < 4, f"the kill should land in round 3 or 4, checkpoint holds round {killed_at}"
    assert json.loads((interrupted / "metrics.json").read_text())["status"] == "running"
    so_far = rounds_without_timing(interrupted)
    assert len(so_far) > killed_at and so_far == rounds_without_timing(first)[:len(so_far)]  # same seed so far

    done = flower.run(REPO, tiny(mnist_dir, interrupted, resume=True, **strategy), NODES)
    report = json.loads((interrupted / "metrics.json").read_text())
    assert report["status"] == "completed", done.output[-4000:]
    assert f"Resumed from the checkpoint of round {killed_at}" in done.output
    assert report["resumed"][0]["from-round"] == killed_at
    assert rounds_without_timing(interrupted) == rounds_without_timing(first)
    assert (interrupted / "model.pt").read_bytes() == (first / "model.pt").read_bytes()


def test_resume_refuses_another_configuration_and_extends_a_finished_run(flower, mnist_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny(mnist_dir, out, **{"num-server-rounds": 1, "fraction-evaluate": 0.0})
    assert json.loads((flower.run(REPO, config, NODES).output and (out / "metrics.json")).read_text())["status"] \
        == "completed"
    flower.run(REPO, config | {"resume": True, "lr": 0.01, "p": 0.5}, NODES)
    latest = flower.runs()[0]
    assert latest["status"] == "finished:failed"
    assert "Cannot resume: the run config differs from the checkpoint's in 'lr'" in latest["status-details"]
    assert "'p': checkpoint 0.7, now 0.5" in latest["status-details"]

    done = flower.run(REPO, config | {"resume": True, "num-server-rounds": 2}, NODES)  # extend a completed run
    report = json.loads((out / "metrics.json").read_text())
    assert report["status"] == "completed", done.output[-4000:]
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert report["config"]["num-server-rounds"] == 2
