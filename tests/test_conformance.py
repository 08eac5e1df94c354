"""The library in Flower app shapes it did not write, end to end in the real simulation engine.

Each app under tests/conformance/ is a copy of one of Flower's own examples (its model, training loop,
strategy options and record layout; only the data source is local) whose ServerApp runs, in one
``flwr run``, plain FedAvg, GMA(FedAvg), GMA(FedAdam) and FedGMA (and FedGMA's gradient direction where the
client sends gradients) on two simulated clients (tests/conformance/variants.py). For every variant: the
app's own central loss fell below its start, the mask diagnostics were recorded every round, and the model
saved the app's way loads back and evaluates to finite numbers. "Fell below its start" is asked of the best
round: the apps' own training is not seeded, and FedGMA's default step (1.5 times FedAvg's on agreed
coordinates) can overshoot in a round of an untuned copy, as the legacy tutorial's did once in two rounds.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
from conftest import ONE_ACTOR, REPO

from fedgma.tools.local_flower import LocalFlower

pytestmark = pytest.mark.simulation

CONFORMANCE = REPO / "tests" / "conformance"
#: app folder, its package, extra run config, what it is
APPS = {
    "quickstart-pytorch": ("quickstart-pytorch", "pytorchexample", {"model": "net"}),
    "resnet18-batchnorm": ("quickstart-pytorch", "pytorchexample",
                           {"model": "resnet18", "learning-rate": 0.01, "num-server-rounds": 1}),
    "numpy-only": ("numpy-app", "numpyapp", {}),
    "legacy-tutorial": ("legacy-tutorial", "my_awesome_app", {}),
    "scikit-learn": ("sklearn-app", "sklearnexample", {}),
}


@pytest.fixture(scope="module")
def flower():
    with LocalFlower() as local:  # one SuperLink for every app; each run starts its own simulation
        yield local


@pytest.mark.parametrize("case", list(APPS))
def test_a_flower_app_shape_trains_under_every_wrapper(case, flower, mnist_dir, tmp_path):
    folder, package, config = APPS[case]
    app = tmp_path / folder
    shutil.copytree(CONFORMANCE / folder, app)
    shutil.copy(CONFORMANCE / "variants.py", app / package)
    results = tmp_path / "results.json"
    reads_mnist = "data-dir" in (app / "pyproject.toml").read_text()
    done = flower.run(app, {"results-path": str(results)} | ({"data-dir": str(mnist_dir)} if reads_mnist else {})
                      | config, 2, ONE_ACTOR, timeout=600)
    assert results.is_file(), done.output[-6000:]
    variants = json.loads(results.read_text())
    assert {"fedavg", "gma-fedavg", "gma-fedadam", "fedgma"} <= set(variants)
    for name, outcome in variants.items():
        losses = {int(r): loss for r, loss in outcome["losses"].items()}
        assert min(losses[r] for r in losses if r > 0) < losses[0], (case, name, losses)  # it learned
        assert all(math.isfinite(loss) for loss in losses.values()), (case, name, losses)
        assert outcome["saved-model-finite"], (case, name)
        if name != "fedavg":
            rounds = outcome["train-metrics"]
            assert len(rounds) == max(losses) and all("mask-density" in m for m in rounds.values()), (case, name)
