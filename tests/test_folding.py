"""Aggregation from running sums (fedgma/strategies/folding.py, sums.py, streaming.py, ReplyGuard's fold path).

The fold path is taken when every sampled node's place in the partition order is
known (here: simulated nodes, as Flower's simulation engine lists them) and the
wrapped strategy's aggregate is a sum. It must give what holding every reply gives
(up to the order of floating-point additions), the same bits whatever order the
replies arrive in, hold no reply it has folded, and refuse what screening refuses.
"""

from __future__ import annotations

import gc
import time
import weakref

import numpy as np
import pytest
from conftest import grid_with, reply, simulated_nodes
from flwr.app import ConfigRecord, MetricRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedYogi

from fedgma.strategies import GMA, FedGMA, ReplyGuard
from fedgma.strategies.records import decode, encode
from fedgma.strategies.streaming import StreamingGrid
from fedgma.strategies.sums import MetricSums, SignSums, WeightedSums

NODES = [9_000_000_000 + 7 * i for i in range(5)]  # node ids, in partition (registration) order


def small(cls=FedAvg, **options):
    return cls(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0, **options)


def model(rng):
    """A layer, a bias, BatchNorm's running variance and its 0-d integer counter."""
    return {"w": rng.standard_normal((6, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32),
            "bn.running_var": rng.uniform(0.5, 1.5, 4).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64)}


def clients(reference, rng, count=len(NODES)):
    return [{name: (value + (0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
                    if value.dtype.kind == "f" else value + 2) for name, value in reference.items()}
            for _ in range(count)]


def run_round(strategy, reference, weights, folded, order=None, gradients=None, metrics=None, ordered=None):
    """One round through ReplyGuard: configure on a grid of simulated nodes (``ordered``, by default
    ``folded``) or of nodes without a known order; the replies come back in ``order`` (default: partition
    order); ``folded``: whether the round must have used running sums."""
    grid = grid_with(NODES, simulated_nodes(NODES) if (folded if ordered is None else ordered) else None)
    instructions = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, encode(reference),
                                                                                ConfigRecord(), grid)}
    built = [reply(instructions[node], w, 10 + 20 * i, gradient=None if gradients is None else gradients[i],
                   **(metrics[i] if metrics else {"accuracy": 0.5 + 0.1 * i}))
             for i, (node, w) in enumerate(zip(NODES, weights, strict=True))]
    arrays, out = strategy.aggregate_train(1, [built[i] for i in (order or range(len(built)))])
    assert strategy.notes[1]["aggregation"] == ("running sums" if folded else "every reply held")
    return (None if arrays is None else decode(arrays)), out


MAKERS = {
    "fedavg": lambda: small(), "fedprox": lambda: small(FedProx, proximal_mu=0.1),
    "fedavgm": lambda: small(FedAvgM, server_momentum=0.9), "fedadam": lambda: small(FedAdam),
    "fedyogi": lambda: small(FedYogi), "fedadagrad": lambda: small(FedAdagrad),
    "gma-fedavg": lambda: GMA(small(), tau=0.6), "gma-hard-fedadam": lambda: GMA(small(FedAdam), mask="hard"),
    "gma-weighted": lambda: GMA(small(FedProx, proximal_mu=0.1), weighted_agreement=True),
    "fedgma-pseudo-gradient": lambda: FedGMA(small(), p=0.6, server_lr=0.5),
    "fedgma-gradient-weighted": lambda: FedGMA(small(), p=0.6, server_lr=0.5, direction="gradient",
                                               weighted_agreement=True),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_running_sums_give_what_holding_every_reply_gives(name):
    rng = np.random.default_rng(1)
    reference = model(rng)
    weights = clients(reference, rng)
    gradients = clients({k: v for k, v in reference.items()}, rng) if "gradient-" in name else None
    results = [run_round(ReplyGuard(MAKERS[name]()), reference, weights, folded, gradients=gradients)
               for folded in (True, False)]
    (folded, folded_metrics), (held, held_metrics) = results
    assert set(folded) == set(held) and all(folded[k].dtype == held[k].dtype for k in held)
    for key in held:
        np.testing.assert_allclose(folded[key], held[key], rtol=2e-6, atol=1e-7, err_msg=key)
    assert set(folded_metrics) == set(held_metrics)
    for key, value in held_metrics.items():
        assert folded_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_running_sums_do_not_depend_on_the_arrival_order():
    rng = np.random.default_rng(2)
    reference = model(rng)
    weights = clients(reference, rng)
    first = run_round(ReplyGuard(GMA(small(FedAdam))), reference, weights, True)[0]
    for order in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        again = run_round(ReplyGuard(GMA(small(FedAdam))), reference, weights, True, order=order)[0]
        assert all(np.array_equal(again[k], first[k]) for k in first)


def test_a_folded_reply_is_not_held():
    """Each reply is dropped once folded: by the time the next one is handed over, the one before is gone."""
    rng = np.random.default_rng(3)
    reference = model(rng)
    strategy = ReplyGuard(FedGMA(small(), p=0.5))
    grid = grid_with(NODES, simulated_nodes(NODES))
    instructions = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, encode(reference),
                                                                                ConfigRecord(), grid)}
    alive = []

    def replies():
        for i, node in enumerate(NODES):
            gc.collect()
            alive.append(sum(ref() is not None for ref in refs))
            message = reply(instructions[node], clients(reference, rng, 1)[0], 10)
            refs.append(weakref.ref(message))
            yield message
            del message

    refs = []
    arrays, metrics = strategy.aggregate_train(1, replies())
    assert arrays is not None and metrics["replies-accepted"] == len(NODES)
    assert alive == [0] * len(NODES)


def test_running_sums_refuse_a_reply_whose_metrics_differ_as_screening_does():
    rng = np.random.default_rng(4)
    reference = model(rng)
    weights = clients(reference, rng)
    metrics = [{"accuracy": 0.5}, {"accuracy": 0.6, "extra": 1.0}, {"accuracy": 0.7}, {"accuracy": 0.8},
               {"accuracy": 0.9}]
    results = [run_round(ReplyGuard(small()), reference, weights, folded, metrics=metrics) for folded in (True, False)]
    (folded, folded_metrics), (held, held_metrics) = results
    assert folded_metrics["replies-rejected"] == held_metrics["replies-rejected"] == 1
    assert folded_metrics["replies-accepted"] == 4
    assert all(np.allclose(folded[k], held[k], rtol=2e-6) for k in held)


@pytest.mark.parametrize("make", [lambda: small(FedMedian), lambda: GMA(small(FedMedian)),
                                  lambda: small(train_metrics_aggr_fn=lambda records, key: MetricRecord({"n": 1}))],
                         ids=["median", "gma-median", "own-metric-callback"])
def test_what_needs_every_reply_holds_every_reply(make):
    rng = np.random.default_rng(5)
    reference = model(rng)
    arrays, _ = run_round(ReplyGuard(make()), reference, clients(reference, rng), folded=False, ordered=True)
    assert arrays is not None


def test_sums_are_the_sums_they_say():
    arrays = [{"x": np.array([1.0, -2.0, 0.0], np.float32), "n": np.array(3, np.int64)},
              {"x": np.array([3.0, -1.0, 2.0], np.float32), "n": np.array(5, np.int64)}]
    sums, signs, metrics = WeightedSums(), SignSums(), MetricSums("num-examples")
    for a, w in zip(arrays, (1.0, 3.0)):
        sums.add(a, w)
        signs.add({"x": a["x"]})
        metrics.add({"num-examples": w, "loss": w, "curve": [w, 2 * w]}, w)
    mean = sums.mean()
    assert mean["x"].dtype == np.float32 and mean["n"].dtype == np.float64  # as Flower's FedAvg gives them
    np.testing.assert_array_equal(mean["x"], np.array([2.5, -1.25, 1.5], np.float32))
    assert mean["n"] == 4.5
    np.testing.assert_array_equal(signs.agreement()["x"], [1.0, 1.0, 0.5])
    assert metrics.mean() == {"loss": 2.5, "curve": [2.5, 5.0]}


class SlowGrid:
    """Replies become available one per pull, in push order; remembers how many were pushed and pulled."""

    pull_interval = 0.01

    def __init__(self, count):
        self.count, self.pushed, self.pulled, self.most_in_flight = count, 0, 0, 0

    def push_messages(self, messages):
        ids = [f"id{self.pushed + i}" for i, _ in enumerate(messages)]
        self.pushed += len(ids)
        self.most_in_flight = max(self.most_in_flight, self.pushed - self.pulled)
        return ids

    def pull_messages(self, ids):
        if self.pulled >= self.count or f"id{self.pulled}" not in ids:
            return []
        message = type("Reply", (), {})()
        message.metadata = type("Metadata", (), {"reply_to_message_id": f"id{self.pulled}"})()
        self.pulled += 1
        return [message]


def test_the_streaming_grid_hands_each_reply_over_as_it_is_pulled_and_stops_at_the_timeout():
    grid = SlowGrid(3)
    replies = StreamingGrid(grid).send_and_receive([object()] * 3, timeout=60)
    assert grid.pulled == 0 and grid.pushed == 3  # every message sent at once; nothing waits for the round
    next(replies)
    assert grid.pulled == 1
    assert len(list(replies)) == 2
    started = time.time()
    assert len(list(StreamingGrid(SlowGrid(0)).send_and_receive([object()], timeout=0.2))) == 0
    assert 0.2 <= time.time() - started < 5


def test_a_window_keeps_that_many_messages_in_flight():
    grid = SlowGrid(7)
    replies = list(StreamingGrid(grid, window=lambda messages: 2).send_and_receive([object()] * 7, timeout=60))
    assert [r.metadata.reply_to_message_id for r in replies] == [f"id{i}" for i in range(7)]
    assert grid.most_in_flight == 2 and grid.pushed == 7
