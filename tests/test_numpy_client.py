"""NumPyClients: ours, a foreign one through the adapter, and the legacy-client mistake made visible."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import numpy as np
import pytest
from conftest import ONE_ACTOR, REPO
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client import NumPyClient

from fedgma.strategies.numpy_clients import NumPyClientAdapter
from fedgma.client_app import client_fn
from fedgma.tools.local_flower import LocalFlower
from fedgma.numpy_client import ColoredMnistClient
from fedgma.strategies.masking import hard_mask, sign_agreement, weighted_mean

EXAMPLE = REPO / "examples" / "numpy-client"


def context(partition_id=0, **run_config):
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition_id, "num-partitions": 10},
                   state=RecordDict(), run_config=run_config)


def train_message(arrays, **config):
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(config)}), dst_node_id=7,
                   message_type="train")


def test_our_client_is_a_numpy_client_and_fits_its_partition(mnist_dir):
    ctx = context(**{"data-dir": str(mnist_dir), "max-client-examples": 64, "batch-size": 0})
    client = client_fn(ctx)
    assert isinstance(client, ColoredMnistClient) and isinstance(client, NumPyClient)
    parameters = client.get_parameters({})
    weights, n, metrics = client.fit([p.copy() for p in parameters], {"server-round": 1})
    assert n == 64 and set(metrics) == {"train-loss", "train-accuracy"}
    assert [w.shape for w in weights] == [p.shape for p in parameters]
    assert any(not np.array_equal(w, p) for w, p in zip(weights, parameters))
    assert [g.shape for g in client.last_gradient] == [p.shape for p in parameters]
    loss, n, metrics = client.evaluate(weights, {})
    assert n == 64 and 0 <= metrics["local-accuracy"] <= 1 and loss > 0


class Doubler(NumPyClient):
    """A foreign client: doubles every array, reports a text metric."""

    last_config = None

    def fit(self, parameters, config):
        Doubler.last_config = dict(config)
        return [2 * p for p in parameters], 5, {"note": "text", "score": 1.5}

    def evaluate(self, parameters, config):
        return 0.5, 5, {}


def test_adapter_packs_a_foreign_fit_and_names_what_is_missing():
    adapter = NumPyClientAdapter(lambda ctx: Doubler())
    arrays = {"a": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    message = train_message({k: Array(v) for k, v in arrays.items()})
    answer = adapter.train(message, context(partition_id=3))
    assert list(answer.content["arrays"].keys()) == ["a", "b"]
    assert np.array_equal(answer.content["arrays"]["a"].numpy(), 2 * arrays["a"])
    assert dict(answer.content["metrics"]) == {"score": 1.5, "num-examples": 5}  # text cannot be a metric
    assert answer.content["client"]["partition-id"] == 3
    with pytest.raises(ValueError, match="Doubler has no 'last_gradient' attribute.*pseudo-gradient"):
        adapter.train(train_message({k: Array(v) for k, v in arrays.items()}, **{"send-gradient": True}),
                      context())

    class Short(NumPyClient):
        def fit(self, parameters, config):
            return parameters[:1], 5, {}

    with pytest.raises(ValueError, match="Short.fit gave 1 arrays; the server sent 2 \\(a, b\\)"):
        NumPyClientAdapter(lambda ctx: Short()).train(message, context())
    with pytest.raises(TypeError, match="client_fn must return a flwr.client.NumPyClient"):
        NumPyClientAdapter(lambda ctx: object()).train(message, context())


def test_adapter_serves_to_client_and_the_servers_record_keys():
    """Flower's tutorials end client_fn with .to_client(); a strategy may name its records as it likes."""
    adapter = NumPyClientAdapter(lambda ctx: Doubler().to_client())
    message = Message(RecordDict({"model": ArrayRecord({"a": Array(np.ones(2, np.float32))}),
                                  "cfg": ConfigRecord({"lr": 0.1})}), dst_node_id=7, message_type="train")
    answer = adapter.train(message, context())
    assert set(answer.content.array_records) == {"model"}
    assert np.array_equal(answer.content["model"]["a"].numpy(), 2 * np.ones(2, np.float32))
    assert Doubler.last_config == {"lr": 0.1}
    answer = adapter.evaluate(message, context())
    assert answer.content["metrics"]["num-examples"] == 5


def _load_example_client():
    spec = importlib.util.spec_from_file_location("linear_client", EXAMPLE / "linear_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.simulation
def test_foreign_numpy_client_trains_with_fedgma_through_the_adapter(tmp_path):
    """The README's example app, run as is: its weights are what the client's fit and FedGMA's rule give."""
    out = tmp_path / "weights.npz"
    with LocalFlower() as flower:
        done = flower.run(EXAMPLE, {"num-server-rounds": 3, "output-file": str(out)}, 4, ONE_ACTOR)
        assert flower.runs()[0]["status"] == "finished:completed", done.output[-4000:]
    got = [np.load(out)[f"arr_{i}"] for i in range(2)]

    example = _load_example_client()
    clients = [example.LinearClient(pid) for pid in range(4)]
    current = [np.zeros((3, 1)), np.zeros(1)]
    for _ in range(3):  # FedGMA, pseudo-gradient direction, p = 0.6, server lr 0.5, by hand
        results = [client.fit([p.copy() for p in current], {}) for client in clients]
        new = []
        for layer, reference in enumerate(current):
            updates = [r[0][layer] for r in results]
            mean = weighted_mean(updates, [r[1] for r in results])
            mask = hard_mask(sign_agreement(updates, reference=reference), 0.6)
            new.append(mean - 0.5 * mask * (reference - mean))
        current = new
    for expected, actual in zip(current, got):
        np.testing.assert_allclose(actual, expected, rtol=1e-12)
    assert not np.allclose(got[0], 0)


def test_the_docs_show_the_example_code_verbatim():
    page = (REPO / "docs" / "use-with-flower.md").read_text()
    for name in ("linear_client.py", "linear_server.py"):
        assert (EXAMPLE / name).read_text().strip() in page, f"docs/use-with-flower.md's copy of {name} is out of date"


@pytest.mark.simulation
def test_a_legacy_client_against_our_server_gets_a_clear_diagnosis(mnist_dir, tmp_path):
    app = tmp_path / "legacy-client-app"
    app.mkdir()
    pyproject = re.sub(r'clientapp = ".*"', 'clientapp = "legacy_client:app"', (REPO / "pyproject.toml").read_text())
    (app / "pyproject.toml").write_text(pyproject.replace('name = "fedgma"', 'name = "fedgma-legacy-client"'))
    shutil.copy(REPO / "tests" / "legacy_client_app" / "legacy_client.py", app)
    out = tmp_path / "out"
    with LocalFlower() as flower:
        done = flower.run(app, {"data-dir": str(mnist_dir), "num-server-rounds": 1, "max-client-examples": 50,
                                "max-test-examples": 100, "output-dir": str(out)}, 2, ONE_ACTOR)
        status = flower.runs()[0]["status"]
    assert "the ClientApp is a legacy ClientApp(client_fn=...) serving a NumPyClient" in done.output
    assert "fedgma.clientapp_from_numpy_client(client_fn)" in done.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["rounds"][1]["replies-failed"] == 2 and "fitins.parameters" in report["rounds"][1]["diagnosis"]
    assert report["status"].startswith("failed: no round aggregated a reply in 1 rounds")  # not "completed"
    assert status == "finished:failed"
