"""The library inside apps it did not write: models with BatchNorm, other record keys and weights, metric
callbacks, strategies it must refuse, and misuse without the app's ReplyGuard (constructed replies, real
Flower strategies)."""

import random
import re

import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO, grid_with
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common import ndarrays_to_parameters
from flwr.server import strategy as legacy
from flwr.serverapp import strategy as message_api
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedYogi, Krum

from fedgma.legacy.strategies import LegacyFedGMA, LegacyGMA
from fedgma.strategies import GMA, FedGMA, ReplyGuard
from fedgma.strategies.composition import CompositionError
from fedgma.strategies.records import decode, encode
from fedgma.strategies.trainable import is_trainable


def small(cls=FedAvg, **options):
    return cls(min_available_nodes=1, min_train_nodes=1, **options)


def one_round(strategy, reference, clients, examples=None, key="arrays", weight_key="num-examples", metrics=None):
    """configure_train, then one reply per client under ``key`` with ``weight_key``; the aggregate and metrics."""
    instructions = sorted(strategy.configure_train(1, encode(reference), ConfigRecord(),
                                                   grid_with(range(1, len(clients) + 1))),
                          key=lambda message: message.metadata.dst_node_id)
    examples = examples or [10 * (i + 1) for i in range(len(clients))]
    replies = [Message(RecordDict({key: encode(weights), "metrics": MetricRecord(
        {weight_key: n, "train-loss": 1.0, **(metrics or {})})}), reply_to=instruction)
        for instruction, weights, n in zip(instructions, clients, examples)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return (None if arrays is None else decode(arrays)), metrics


def batchnorm_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))


def state(model):
    return {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


def trained_clients(model, count, steps=2, size=8, scale=1.0):
    """Each client: ``model`` after ``steps`` forward passes in train mode on inputs of ``scale`` (BatchNorm's
    statistics move towards their variance) and a small random update of every parameter."""
    start, clients = {k: v.clone() for k, v in model.state_dict().items()}, []
    for client in range(count):
        model.load_state_dict(start)
        model.train()
        generator = torch.Generator().manual_seed(client)
        with torch.no_grad():
            for _ in range(steps):
                model(torch.randn(4, 3, size, size, generator=generator) * scale * (1 + client))
            for parameter in model.parameters():
                parameter += 0.01 * torch.randn(parameter.shape, generator=generator)
        clients.append(state(model))
    model.load_state_dict(start)
    return clients


MASKING = {
    "gma-fedavg": lambda: GMA(small(), tau=0.4),
    "gma-fedadam": lambda: GMA(small(FedAdam, eta=0.01), tau=0.4),
    "fedgma": lambda: FedGMA(small(), server_lr=1.0),
}


@pytest.mark.parametrize("make", list(MASKING.values()), ids=list(MASKING))
def test_batchnorm_statistics_are_aggregated_as_the_wrapped_strategy_does(make):
    model = batchnorm_net()
    reference, clients = state(model), trained_clients(model, 3, size=8)
    masked, metrics = one_round(make(), reference, clients)
    plain, _ = one_round(make().strategy, reference, clients)  # a fresh copy of the wrapped strategy, alone
    for name in reference:
        assert masked[name].shape == plain[name].shape and masked[name].dtype == plain[name].dtype, name
        if not is_trainable(name, reference[name]):
            np.testing.assert_array_equal(masked[name], plain[name], err_msg=name)
    assert np.all(masked["1.running_var"] > 0)
    assert "mask-density/1.running_var" not in metrics and "mask-density/1.weight" in metrics


def test_a_resnet18_under_fedgma_evaluates_in_eval_mode_without_nan():
    """Small inputs shrink every running variance to about 0.9^8 = 0.43 of its start on every client: a step
    that extrapolated them (2 w_bar - w_t at server_lr 1) would make them negative."""
    model = torchvision.models.resnet18(num_classes=3)
    reference, clients = state(model), trained_clients(model, 3, steps=8, size=16, scale=0.05)
    new, _ = one_round(FedGMA(small(), server_lr=1.0), reference, clients)
    for name, array in new.items():
        if name.endswith("running_var"):
            assert np.all(array > 0), name
    model.load_state_dict({name: torch.from_numpy(np.array(array)).to(model.state_dict()[name].dtype)
                           for name, array in new.items()})
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_zero_d_integer_and_empty_arrays_pass_through_the_masks():
    reference = {"w": np.zeros(3, np.float32), "count": np.array(5, np.int64), "empty": np.zeros(0, np.float32),
                 "half": np.zeros(2, np.float16), "scalar": np.array(1.5, np.float32)}
    clients = [{"w": np.array([1, -1, 1], np.float32), "count": np.array(7, np.int64),
                "empty": np.zeros(0, np.float32), "half": np.array([1, 2], np.float16),
                "scalar": np.array(2.5, np.float32)} for _ in range(2)]
    for make in MASKING.values():
        new, _ = one_round(make(), reference, clients)
        plain, _ = one_round(make().strategy, reference, clients)
        for name in ("count", "empty", "scalar"):
            assert new[name].dtype == plain[name].dtype and new[name].shape == plain[name].shape
            np.testing.assert_array_equal(new[name], plain[name])


def test_the_trainable_arrays_can_be_named():
    reference = {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)}
    clients = [{"a": np.array([1, -1], np.float32), "b": np.array([1, -1], np.float32)},
               {"a": np.array([1, 1], np.float32), "b": np.array([1, 1], np.float32)}]
    new, metrics = one_round(FedGMA(small(), p=0.8, server_lr=1.0, trainable={"a"}), reference, clients, [1, 1])
    np.testing.assert_allclose(new["a"], [2.0, 0.0])  # agreed coordinate steps twice as far; the other is w_bar
    np.testing.assert_allclose(new["b"], [1.0, 0.0])  # not trainable: FedAvg's mean
    assert "mask-density/b" not in metrics
    with pytest.raises(TypeError, match="trainable"):
        GMA(small(), trainable="a")


def test_the_wrapped_strategys_record_keys_weights_and_metric_callback_are_honoured():
    calls = []

    def count_clients(records, weighted_by_key):
        calls.append(len(records))
        return MetricRecord({"clients": len(records)})

    reference = {"w": np.zeros(3, np.float32)}
    rng = np.random.default_rng(0)
    clients = [{"w": rng.standard_normal(3).astype(np.float32)} for _ in range(5)]
    options = dict(arrayrecord_key="model", configrecord_key="cfg", weighted_by_key="n",
                   train_metrics_aggr_fn=count_clients)
    plain, _ = one_round(small(**options), reference, clients, key="model", weight_key="n")
    for strategy in (GMA(small(**options), tau=0.0), FedGMA(small(**options), server_lr=0.0)):
        calls.clear()
        instructions = list(strategy.configure_train(1, encode(reference), ConfigRecord(), grid_with([1])))
        assert set(instructions[0].content.array_records) == {"model"}
        assert set(instructions[0].content.config_records) == {"cfg"}
        new, metrics = one_round(strategy, reference, clients, key="model", weight_key="n")
        np.testing.assert_array_equal(new["w"], plain["w"])  # mask off: the wrapped strategy's own aggregate
        assert calls == [5] and metrics["clients"] == 5


def test_fedgma_refuses_a_strategy_whose_update_is_not_fedavgs():
    for cls in (FedAdam, FedYogi, FedAvgM, FedMedian, Krum):
        with pytest.raises(CompositionError, match=rf"FedGMA\({cls.__name__}\) is refused"):
            FedGMA(cls())
    FedGMA(FedProx(proximal_mu=0.1))  # FedAvg's aggregation, the proximal term stays on the clients


def test_fedgmas_defaults_mask_on_an_ordinary_client():
    """No gradient asked for or needed; the step acts (the seed repository's 1e-4 left it a no-op)."""
    reference = {"w": np.zeros(4, np.float32)}
    clients = [{"w": np.array([1, 1, -1, 1], np.float32)}, {"w": np.array([1, -1, -1, 2], np.float32)}]
    strategy = FedGMA(FedAvg())
    new, metrics = one_round(strategy, reference, clients, [1, 1])
    assert metrics["replies-accepted"] == 2 and metrics["mask-effect"] > 0.1
    np.testing.assert_allclose(new["w"], [1.5, 0.0, -1.5, 2.25])  # w_bar + 0.5 m (w_bar - w_t), p = 0.8


def test_without_a_guard_failed_and_malformed_replies_are_counted_and_misuse_is_named(caplog):
    reference = {"w": np.zeros(3, np.float32)}
    for strategy in (GMA(small()), FedGMA(small())):
        with pytest.raises(RuntimeError, match="before configure_train"):
            strategy.aggregate_train(1, [])
        instructions = list(strategy.configure_train(1, encode(reference), ConfigRecord(), grid_with([1, 2, 3])))
        good = Message(RecordDict({"arrays": encode({"w": np.ones(3, np.float32)}),
                                   "metrics": MetricRecord({"num-examples": 5})}), reply_to=instructions[0])
        wrong_shape = Message(RecordDict({"arrays": encode({"w": np.ones(4, np.float32)}),
                                          "metrics": MetricRecord({"num-examples": 5})}), reply_to=instructions[1])
        failed = Message(Error(code=0, reason="client crashed"), reply_to=instructions[2])
        arrays, metrics = strategy.aggregate_train(1, [good, wrong_shape, failed])
        assert arrays is not None
        assert (metrics["replies-accepted"], metrics["replies-rejected"], metrics["replies-failed"]) == (1, 1, 1)
        arrays, metrics = strategy.aggregate_train(1, [failed])
        assert arrays is None and metrics["replies-failed"] == 1
    assert "has shape (4,), expected (3,)" in caplog.text and "client crashed" in caplog.text


def test_reproducible_sampling_never_reseeds_or_draws_from_pythons_random(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the global random generator was used")

    strategy = ReplyGuard(GMA(FedAvg(fraction_train=0.5, min_available_nodes=1, min_train_nodes=1)), seed=4,
                          reproducible_sampling=True)
    grid = grid_with(range(1, 9))
    grid.send_and_receive.return_value = []
    monkeypatch.setattr(random, "seed", forbidden)
    monkeypatch.setattr(random, "sample", forbidden)
    picked = [sorted(m.metadata.dst_node_id for m in
                     strategy.configure_train(1, encode({"w": np.zeros(2, np.float32)}), ConfigRecord(), grid))
              for _ in range(2)]
    assert picked[0] == picked[1] and len(picked[0]) == 4


def test_wrapping_a_strategy_that_overrides_start_warns(caplog):
    class SavesResults(FedAvg):
        def start(self, *args, **kwargs):
            return super().start(*args, **kwargs)

    GMA(SavesResults())
    assert "overrides start(), which GMA does not call" in caplog.text



def _both_apis(name):
    """``name``'s Message-API strategy and, where Flower has one, its legacy one, with required arguments."""
    start = ndarrays_to_parameters([np.zeros(1)])
    message = {"QFedAvg": dict(client_learning_rate=0.1), "FedProx": dict(proximal_mu=0.1)}.get(name, {})
    old = {"FedProx": dict(proximal_mu=0.1), "FedAdam": dict(initial_parameters=start),
           "FedYogi": dict(initial_parameters=start), "FedAdagrad": dict(initial_parameters=start)}.get(name, {})
    made = [(getattr(message_api, name)(**message), GMA, FedGMA)]
    if hasattr(legacy, name):
        made.append((getattr(legacy, name)(**old), LegacyGMA, LegacyFedGMA))
    return made


def test_the_combination_table_in_the_docs_is_what_the_code_does():
    text = (REPO / "docs" / "use-with-flower.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (exact GMA|commutes|refused) \| (defined|refused) \|$", text, re.M)
    assert len(rows) == 12
    meaning = {"exact GMA": "weighted-mean", "commutes": "coordinate-wise"}
    for name, gma, fedgma in rows:
        for strategy, make_gma, make_fedgma in _both_apis(name):
            if gma == "refused":
                with pytest.raises(CompositionError, match="is refused"):
                    make_gma(strategy)
            else:
                assert make_gma(strategy).aggregation == meaning[gma], name
            if fedgma == "refused":
                with pytest.raises(CompositionError, match="is refused"):
                    make_fedgma(strategy)
            else:
                make_fedgma(strategy)
