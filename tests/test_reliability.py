"""Runs that survive: same seed, same result; interrupted, resumed and extended equals done in one go.

Through the real simulation engine (``flwr run``, Ray, 6 virtual clients of which 3, sampled reproducibly,
train in each round), for FedGMA and for GMA over FedAdam (whose server moments must survive the
interruption), driven the way a grid is: by the experiment runner (``run_grid``), which resumes what was
interrupted, skips what is done and extends a finished run to more rounds.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from fedgma.checkpoint import load_checkpoint
from fedgma.server_app import _start
from fedgma.settings import ConfigError, Settings
from fedgma.tools.experiments.grid import Grid, Run
from fedgma.tools.experiments.runner import COMPLETED, EXTEND, INTERRUPTED, run_config_for, run_grid, run_state
from fedgma.tools.local_flower import LocalFlower

pytestmark = pytest.mark.simulation

TIMING = ("seconds", "time")  # wall-clock fields, the only ones allowed to differ


def rounds_without_timing(folder):
    report = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k not in TIMING} for row in report["rounds"]]


#: Virtual clients of these runs; half of them are sampled each round (reproducible sampling, the default).
NODES = 6


def one_run(strategy: dict, rounds: int) -> Grid:
    """A grid of one seed-0 run of ``strategy`` for ``rounds`` rounds."""
    config = {"num-server-rounds": rounds, "max-client-examples": 120, "max-test-examples": 200,
              "min-available-nodes": NODES, "fraction-train": 0.5, "fraction-evaluate": 1.0, **strategy}
    return Grid("reliability", "one run", [Run("seed=0", config, NODES, 1)])


@pytest.fixture(scope="module")
def flower():
    with LocalFlower() as local:  # its own short /tmp folder: Ray socket paths must stay under 108 bytes
        yield local


def checkpoint_round(folder) -> int:
    try:
        return load_checkpoint(folder).round
    except ConfigError:  # none written yet
        return -1


#: The strategies, and whether the finished 4-round run is then extended to a fifth round (once is enough:
#: extending resumes from a checkpoint as resuming an interrupted run does).
CASES = {"fedgma": ({"strategy": "fedgma"}, True), "gma-fedadam": ({"strategy": "fedadam", "gma": True}, False)}


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_same_result_and_resumed_or_extended_equals_one_go(flower, mnist_dir, tmp_path, case, capsys):
    """A run in one go; then the same seed as a 4-round grid, killed by PID after round 2 is checkpointed (its
    rounds so far must equal the first run's), resumed by the runner, skipped once done and, for FedGMA,
    extended to a fifth round: rounds and final model must be byte-identical to the run done in one go."""
    strategy, extend = CASES[case]
    data, total = str(mnist_dir), 5 if extend else 4
    [done] = run_grid(one_run(strategy, total), tmp_path / "one-go", data, flower=flower)
    first = tmp_path / "one-go" / "reliability" / "seed=0"
    assert done.status == "completed", capsys.readouterr().err[-4000:]
    rounds = rounds_without_timing(first)[1:]
    assert [row["replies-accepted"] for row in rounds] == [3] * total  # half of the clients, sampled
    assert {row["sampling-order"] for row in rounds} == {"simulation registration"}  # no client was asked
    assert {row["aggregation"] for row in rounds} == {"running sums"}  # each reply folded in as it came
    # Resuming with another configuration is refused before anything is written (in Flower, the run then fails
    # with this message as its status details, as any ConfigError does: tests/test_simulation.py).
    other = Settings.from_run_config(run_config_for(one_run(strategy, total).runs[0], first, data, COMPLETED)
                                     | {"resume": True, "lr": 0.01})
    with pytest.raises(ConfigError, match="Cannot resume: the run config differs from the checkpoint's in 'lr'"):
        _start(other)

    grid, results = one_run(strategy, 4), tmp_path / "grid"
    folder = results / "reliability" / "seed=0"
    runner = threading.Thread(target=run_grid, args=(grid, results, data), kwargs={"flower": flower, "retries": 0})
    runner.start()  # no retry: the test, not the runner, resumes this one
    deadline = time.time() + 300
    while checkpoint_round(folder) < 2 and time.time() < deadline and runner.is_alive():
        time.sleep(0.02)
    flower.kill()
    runner.join()
    killed_at = checkpoint_round(folder)
    assert 2 <= killed_at < 4, f"the kill should land in round 3 or 4, checkpoint holds round {killed_at}"
    assert run_state(folder, 4) == INTERRUPTED
    so_far = rounds_without_timing(folder)
    assert len(so_far) > killed_at and so_far == rounds_without_timing(first)[:len(so_far)]  # same seed so far

    capsys.readouterr()
    [resumed] = run_grid(grid, results, data, flower=flower)
    assert (resumed.state, resumed.status) == (INTERRUPTED, "completed")
    assert f"Resumed from the checkpoint of round {killed_at}" in capsys.readouterr().out
    assert json.loads((folder / "metrics.json").read_text())["resumed"][0]["from-round"] == killed_at
    assert rounds_without_timing(folder) == rounds_without_timing(first)[:5]
    [again] = run_grid(grid, results, data, flower=flower)
    assert again.status == "skipped"

    if extend:
        assert run_state(folder, 5) == EXTEND
        capsys.readouterr()
        [extended] = run_grid(one_run(strategy, 5), results, data, flower=flower)
        assert (extended.state, extended.status) == (EXTEND, "completed")
        assert "Resumed from the checkpoint of round 4" in capsys.readouterr().out
    assert rounds_without_timing(folder) == rounds_without_timing(first)
    assert (folder / "model.pt").read_bytes() == (first / "model.pt").read_bytes()
