"""One hostile client: a finite but enormous update, or 10^12 claimed examples, against the bounds and the
robust aggregators (constructed replies, real Flower strategies)."""

import numpy as np
import pytest
from conftest import reply, send
from flwr.serverapp.strategy import FedAvg, FedMedian, Krum

from fedgma.strategies.records import decode
from fedgma.settings import Settings
from fedgma.registry import build_strategy
from fedgma.strategies import GMA, ReplyGuard
from fedgma.strategies.bounds import ReplyBounds, update_norm

HONEST = 5


def honest_and_hostile(seed=0):
    rng = np.random.default_rng(seed)
    reference = {"w": rng.standard_normal((6, 5)).astype(np.float32), "b": np.zeros(5, np.float32)}
    honest = [{n: a + (0.01 * rng.standard_normal(a.shape)).astype(np.float32) for n, a in reference.items()}
              for _ in range(HONEST)]
    hostile = {n: (a + 1e6).astype(np.float32) for n, a in reference.items()}
    return reference, honest, hostile


def aggregate(strategy, reference, clients, examples):
    instructions = send(strategy, reference, node_ids=tuple(range(1, len(clients) + 1)))
    replies = [reply(i, w, n) for i, w, n in zip(instructions, clients, examples)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return decode(arrays), metrics


def distance(a, b):
    return update_norm(a, b)


def test_with_the_defaults_one_client_claiming_1e12_examples_is_the_round():
    reference, honest, hostile = honest_and_hostile()
    new, metrics = aggregate(ReplyGuard(FedAvg(min_available_nodes=1, min_train_nodes=1)), reference,
                             honest + [hostile], [100] * HONEST + [10**12])
    assert distance(new, hostile) < 1e-3 * distance(reference, hostile)  # the README's "what happens"
    assert metrics["replies-clipped"] == 0 and metrics["replies-accepted"] == HONEST + 1


def test_the_bounds_keep_the_model_within_the_stated_distance_of_the_honest_aggregate():
    reference, honest, hostile = honest_and_hostile()
    cap, bound = 100.0, 1.0
    strategy = build_strategy(Settings.from_run_config({"strategy": "fedavg", "max-examples": cap,
                                                        "max-update-norm": bound}))
    new, metrics = aggregate(strategy, reference, honest + [hostile], [100] * HONEST + [10**12])
    honest_mean, _ = aggregate(ReplyGuard(FedAvg(min_available_nodes=1, min_train_nodes=1)), reference, honest,
                               [100] * HONEST)
    # w_all - w_honest = c / (N + c) (w_x - w_honest), and ||w_x - w_honest|| <= B + ||w_honest - w_t||
    stated = cap / (HONEST * 100 + cap) * (bound + distance(honest_mean, reference))
    assert distance(new, honest_mean) <= stated * (1 + 1e-5)
    assert metrics["replies-clipped"] == 1


def test_clipping_is_fixed_clipping_and_is_named():
    reference = {"w": np.zeros(4, np.float32)}
    bounds = ReplyBounds(max_examples=10, max_update_norm=2.0)
    strategy = ReplyGuard(FedAvg(min_available_nodes=1, min_train_nodes=1), bounds=bounds)
    new, metrics = aggregate(strategy, reference, [{"w": np.array([3.0, 4.0, 0, 0], np.float32)}], [50])
    np.testing.assert_allclose(new["w"], [1.2, 1.6, 0, 0], rtol=1e-6)  # norm 5 scaled to 2
    notes = strategy.notes[1]["reasons"]
    assert any("claimed 50 examples, counted as 10" in n for n in notes)
    assert any("update norm 5 scaled to 2" in n for n in notes)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bounds_refuse_nonsense(bad):
    with pytest.raises(ValueError, match="max_examples"):
        ReplyBounds(max_examples=bad)


@pytest.mark.parametrize("make", [lambda: FedMedian(min_available_nodes=1, min_train_nodes=1),
                                  lambda: Krum(min_available_nodes=1, min_train_nodes=1, num_malicious_nodes=1)],
                         ids=["median", "krum"])
def test_gma_over_a_robust_aggregator_ignores_the_hostile_client_without_any_bound(make):
    reference, honest, hostile = honest_and_hostile(seed=1)
    new, _ = aggregate(GMA(make(), tau=0.4), reference, honest + [hostile], [100] * HONEST + [10**12])
    for name, w_t in reference.items():
        low = np.min([h[name] for h in honest], axis=0)
        high = np.max([h[name] for h in honest], axis=0)
        # masked honest values lie between w_t and the honest values: within their hull widened to w_t
        assert np.all(new[name] >= np.minimum(low, w_t) - 1e-6) and np.all(new[name] <= np.maximum(high, w_t) + 1e-6)
