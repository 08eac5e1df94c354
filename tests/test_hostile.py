"""One hostile client: a finite but enormous update, or 10^12 claimed examples, against the bounds and the
robust aggregators (constructed replies, real Flower strategies)."""

import numpy as np
import pytest
from conftest import reply, send
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from fedgma.strategies.records import decode
from fedgma.settings import Settings
from fedgma.registry import build_strategy
from fedgma.strategies import GMA, ReplyGuard
from fedgma.strategies.bounds import ReplyBounds, update_norm
from fedgma.strategies.composition import CompositionError
from fedgma.strategies.masking import sign_agreement, soft_mask

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


ROBUST = {"median": lambda: FedMedian(min_available_nodes=1, min_train_nodes=1),
          "trimmed-mean": lambda: FedTrimmedAvg(min_available_nodes=1, min_train_nodes=1, beta=0.2)}


@pytest.mark.parametrize("make", list(ROBUST.values()), ids=list(ROBUST))
def test_gma_over_a_robust_aggregator_ignores_the_hostile_client_without_any_bound(make):
    reference, honest, hostile = honest_and_hostile(seed=1)
    new, _ = aggregate(GMA(make(), tau=0.4), reference, honest + [hostile], [100] * HONEST + [10**12])
    for name, w_t in reference.items():
        low = np.min([h[name] for h in honest], axis=0)
        high = np.max([h[name] for h in honest], axis=0)
        # masked honest values lie between w_t and the honest values: within their hull widened to w_t
        assert np.all(new[name] >= np.minimum(low, w_t) - 1e-6) and np.all(new[name] <= np.maximum(high, w_t) + 1e-6)


@pytest.mark.parametrize("make", list(ROBUST.values()), ids=list(ROBUST))
def test_one_voter_moves_the_mask_only_near_the_threshold_and_the_model_only_as_the_aggregator_lets_it(make):
    """The bound docs/use-with-flower.md states: with one vote per client, a client that claims 10^12 examples
    and sends the honest mean update sign-flipped changes each coordinate's agreement by at most 2/K, so the
    mask changes only where the agreement without its lie lies within 2/K of tau; and the result is
    w_t + m * R(updates), R the robust aggregate: it moves the model no further than R lets it."""
    reference, honest, _ = honest_and_hostile(seed=2)
    flipped = {n: w_t - (np.mean([h[n] for h in honest], axis=0) - w_t) for n, w_t in reference.items()}
    truthful = {n: np.mean([h[n] for h in honest], axis=0).astype(np.float32) for n in reference}
    k, tau = HONEST + 1, 0.4
    lied, lied_metrics = aggregate(GMA(make(), tau=tau), reference, honest + [flipped], [100] * HONEST + [10**12])
    _, told_metrics = aggregate(GMA(make(), tau=tau), reference, honest + [truthful], [100] * HONEST + [100])
    plain, _ = aggregate(make(), reference, honest + [flipped], [100] * HONEST + [10**12])
    near, total = 0, 0
    for name, w_t in reference.items():
        told = sign_agreement([c[name] for c in honest + [truthful]], reference=w_t)
        lie = sign_agreement([c[name] for c in honest + [flipped]], reference=w_t)
        assert np.max(np.abs(lie - told)) <= 2 / k + 1e-12
        near += int(np.sum(np.abs(told - tau) <= 2 / k))
        total += told.size
        expected = w_t + soft_mask(lie, tau) * (plain[name] - w_t)
        np.testing.assert_allclose(lied[name], expected, rtol=1e-5, atol=1e-6)
    assert abs(lied_metrics["mask-density"] - told_metrics["mask-density"]) <= near / total


@pytest.mark.parametrize("make", list(ROBUST.values()), ids=list(ROBUST))
def test_example_weighted_agreement_is_refused_over_a_robust_aggregator(make):
    with pytest.raises(CompositionError, match="weighted_agreement=True is refused"):
        GMA(make(), weighted_agreement=True)
