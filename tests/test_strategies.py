"""Strategies' aggregation with constructed replies (real Flower Messages)."""

import random

import numpy as np
import pytest
from conftest import error_reply, grid_with, layers, reply, send, simulated_nodes
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian

from fedgma.strategies.bounds import ReplyBounds
from fedgma.strategies.records import decode, encode
from fedgma.settings import STRATEGIES, ConfigError, Settings
from fedgma.registry import build_strategy
from fedgma.strategies import GMA, FedGMA, ReplyGuard
from fedgma.controls import ControlledFedGMA
from fedgma.strategies.masking import sign_agreement, soft_mask


def global_and_clients(seed=0, k=3):
    rng = np.random.default_rng(seed)
    reference = layers(rng)
    clients = [{n: a + layers(rng, 0.1)[n] for n, a in reference.items()} for _ in range(k)]
    return reference, clients


def run_round(strategy, reference, clients, examples=(10, 30, 60), gradients=None, node_ids=(1, 2, 3)):
    instructions = send(strategy, reference, node_ids)
    replies = [reply(ins, w, n, None if gradients is None else g)
               for ins, w, n, g in zip(instructions, clients, examples, gradients or [None] * len(clients))]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return (None if arrays is None else decode(arrays)), metrics


def fedavg():
    return FedAvg(min_available_nodes=1, min_train_nodes=1)


@pytest.mark.parametrize("make, with_gradients", [
    (lambda: FedGMA(fedavg(), p=0.0, server_lr=0.0, direction="gradient"), True),
    (lambda: FedGMA(fedavg(), p=0.0, server_lr=0.0, direction="pseudo-gradient"), False),
    (lambda: GMA(fedavg(), tau=0.0), False),
    (lambda: GMA(fedavg(), tau=0.0, mask="hard"), False),
], ids=["fedgma-gradient", "fedgma-pseudo-gradient", "gma-soft", "gma-hard"])
def test_mask_off_equals_flowers_fedavg_bit_for_bit(make, with_gradients):
    reference, clients = global_and_clients()
    gradients = [layers(np.random.default_rng(i)) for i in range(3)] if with_gradients else None
    masked, metrics = run_round(make(), reference, clients, gradients=gradients)
    plain, _ = run_round(fedavg(), reference, clients)  # Flower's own FedAvg, unwrapped
    for name in reference:
        assert np.array_equal(masked[name], plain[name])
    assert metrics["mask-density"] == 1.0


def test_fedgma_server_step_by_hand():
    reference = {"w": np.zeros(3, np.float32)}
    clients = [{"w": np.array([1.0, 2.0, 3.0], np.float32)}, {"w": np.array([3.0, 2.0, 1.0], np.float32)}]
    gradients = [{"w": np.array([1.0, 1.0, -1.0], np.float32)}, {"w": np.array([3.0, -1.0, -3.0], np.float32)}]
    # examples 1 and 3: mean weights [2.5, 2, 1.5]; agreement [1, 0, 1] -> hard mask p=0.8 [1, 0, 1]
    # masked mean gradient [2.5, 0, -2.5]; w = mean - 0.1 * that
    new, metrics = run_round(FedGMA(fedavg(), p=0.8, server_lr=0.1, direction="gradient"), reference, clients,
                             (1, 3), gradients, node_ids=(1, 2))
    np.testing.assert_allclose(new["w"], [2.25, 2.0, 1.75], rtol=1e-6)
    assert metrics["mask-density"] == pytest.approx(2 / 3)


def test_fedgma_pseudo_gradient_direction_needs_no_gradient():
    reference = {"w": np.zeros(2, np.float32)}
    clients = [{"w": np.array([1.0, 1.0], np.float32)}, {"w": np.array([1.0, -1.0], np.float32)}]
    # direction w_t - w_k = [-1,-1], [-1, 1]: agreement [1, 0]; mean direction [-1, 0]
    new, _ = run_round(FedGMA(fedavg(), p=0.5, server_lr=0.5, direction="pseudo-gradient"), reference, clients,
                       (1, 1), node_ids=(1, 2))
    np.testing.assert_allclose(new["w"], [1.5, 0.0])


def test_uniform_step_control_steps_every_coordinate_by_the_mask_density():
    reference = {"w": np.zeros(3, np.float32)}
    clients = [{"w": np.array([1.0, 2.0, 3.0], np.float32)}, {"w": np.array([3.0, 2.0, 1.0], np.float32)}]
    gradients = [{"w": np.array([1.0, 1.0, -1.0], np.float32)}, {"w": np.array([3.0, -1.0, -3.0], np.float32)}]
    # as in the hand-computed FedGMA step: the sign mask [1, 0, 1] has density 2/3, the mean gradient is
    # [2.5, -0.5, -2.5]; the control steps w = mean - 0.1 * (2/3) * that on every coordinate
    new, metrics = run_round(ControlledFedGMA(fedavg(), p=0.8, server_lr=0.1, direction="gradient",
                                              control="uniform-step", seed=0), reference, clients,
                             (1, 3), gradients, node_ids=(1, 2))
    np.testing.assert_allclose(new["w"], np.array([2.5, 2.0, 1.5]) - 0.1 * 2 / 3 * np.array([2.5, -0.5, -2.5]),
                               rtol=1e-6)
    assert metrics["mask-density"] == pytest.approx(2 / 3)  # the statistics describe the sign mask


def test_random_mask_control_keeps_each_layers_count_at_random_places():
    rng = np.random.default_rng(0)
    reference = {"w": np.zeros((40, 50), np.float32), "b": np.zeros(30, np.float32)}
    clients = [{n: rng.standard_normal(a.shape).astype(np.float32) for n, a in reference.items()} for _ in range(5)]
    # pseudo-gradient, eta_s = 1: each kept coordinate moves twice as far as the mean update
    make = lambda control: ControlledFedGMA(fedavg(), p=0.6, server_lr=1.0,  # noqa: E731
                                            control=control, seed=7)
    nodes = tuple(range(1, 6))
    masked, _ = run_round(make("none"), reference, clients, (1,) * 5, node_ids=nodes)
    randomised, _ = run_round(make("random-mask"), reference, clients, (1,) * 5, node_ids=nodes)
    again, _ = run_round(make("random-mask"), reference, clients, (1,) * 5, node_ids=nodes)
    mean = {n: np.mean([c[n] for c in clients], axis=0) for n in reference}
    for name in reference:
        # a kept coordinate moved by |mean| from the mean, a masked one not at all
        sign_kept = np.abs(masked[name] - mean[name]) > 0.5 * np.abs(mean[name])
        random_kept = np.abs(randomised[name] - mean[name]) > 0.5 * np.abs(mean[name])
        assert 0 < sign_kept.sum() == random_kept.sum() < sign_kept.size  # same count per layer ...
        assert not np.array_equal(sign_kept, random_kept)  # ... elsewhere
        np.testing.assert_allclose(randomised[name][random_kept], 2 * mean[name][random_kept], rtol=1e-4, atol=1e-6)
        assert np.array_equal(randomised[name], again[name])  # drawn from (seed, round): reproducible


def test_gma_over_a_robust_aggregator_masks_each_reply_before_it_aggregates():
    """GMA over FedMedian: the coordinate-wise median of the masked replies w_t + m * (w_k - w_t)."""
    reference, clients = global_and_clients(seed=3, k=5)
    strategy = GMA(FedMedian(min_available_nodes=1, min_train_nodes=1), tau=0.6, mask="soft")
    new, metrics = run_round(strategy, reference, clients, (1,) * 5, node_ids=tuple(range(1, 6)))
    for name, w_t in reference.items():
        mask = soft_mask(sign_agreement([c[name] for c in clients], reference=w_t), 0.6)
        expected = np.median([w_t + mask * (c[name] - w_t) for c in clients], axis=0)
        np.testing.assert_allclose(new[name], expected, rtol=1e-5, atol=1e-7)
    assert 0 < metrics["mask-mean"] < 1


def test_controls_need_fedgma():
    with pytest.raises(ConfigError, match="'fedgma-control'"):
        Settings.from_run_config({"strategy": "fedavg", "fedgma-control": "random-mask"})
    with pytest.raises(ValueError, match="control"):
        ControlledFedGMA(fedavg(), control="shuffle", seed=0)


def test_fedgma_asks_clients_for_gradients_only_when_it_uses_them():
    reference, _ = global_and_clients()
    assert send(FedGMA(fedavg(), direction="gradient"), reference)[0].content["config"]["send-gradient"] is True
    assert "send-gradient" not in send(FedGMA(fedavg()), reference)[0].content["config"]


def test_fedgma_rejects_reply_without_gradient():
    reference, clients = global_and_clients()
    strategy = ReplyGuard(FedGMA(fedavg(), direction="gradient"))  # the guard screens for FedGMA's gradient
    instructions = send(strategy, reference)
    replies = [reply(instructions[0], clients[0], 10, gradient=clients[0]), reply(instructions[1], clients[1], 10)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["replies-accepted"] == 1 and metrics["replies-rejected"] == 1


def test_gma_soft_mask_by_hand():
    reference = {"w": np.ones(3, np.float32)}
    clients = [{"w": np.array([2.0, 2.0, 0.0], np.float32)}, {"w": np.array([3.0, 0.0, 0.0], np.float32)},
               {"w": np.array([4.0, 0.0, 1.0], np.float32)}]
    # updates [1,1,-1], [2,-1,-1], [3,-1,0]: agreement [1, 1/3, 2/3]; tau 0.5 soft -> [1, 1/3, 1]
    # equal weights: mean update [2, -1/3, -2/3] -> w = 1 + m * mean = [3, 8/9, 1/3]
    new, metrics = run_round(GMA(fedavg(), tau=0.5), reference, clients, (5, 5, 5))
    np.testing.assert_allclose(new["w"], [3.0, 1 - 1 / 9, 1 / 3], rtol=1e-6)
    assert metrics["mask-density"] == pytest.approx(2 / 3)
    assert metrics["mask-mean"] == pytest.approx((2 + 1 / 3) / 3)


def test_gma_over_fedadam_feeds_the_masked_pseudo_gradient_to_adam():
    reference, clients = global_and_clients(seed=3)
    examples = (10, 30, 60)
    adam = dict(eta=0.1, eta_l=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, min_available_nodes=1, min_train_nodes=1)
    got, _ = run_round(GMA(FedAdam(**adam), tau=0.6, mask="soft"), reference, clients, examples)

    # Expected: Adam's step from a pseudo-gradient m * mean(Delta_k), built independently.
    masks = {n: soft_mask(sign_agreement([c[n] - r for c in clients]), 0.6) for n, r in reference.items()}
    total = sum(examples)
    masked_mean = {n: reference[n] + masks[n] * sum(e / total * (c[n] - reference[n]) for c, e in zip(clients, examples))
                   for n in reference}
    expected, _ = run_round(ReplyGuard(FedAdam(**adam)), reference, [masked_mean], (1,), node_ids=(1,))
    unmasked, _ = run_round(ReplyGuard(FedAdam(**adam)), reference, clients, examples)
    for name in reference:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(got[n], unmasked[n]) for n in reference)


@pytest.mark.parametrize("make", [lambda: ReplyGuard(fedavg()), lambda: ReplyGuard(GMA(fedavg(), tau=0.4)),
                                  lambda: ReplyGuard(FedGMA(fedavg(), direction="pseudo-gradient"))])
def test_rejected_replies_do_not_change_the_result_of_the_others(make):
    reference, clients = global_and_clients()
    clean, _ = run_round(make(), reference, clients)

    strategy = make()
    instructions = send(strategy, reference, node_ids=(1, 2, 3, 4, 5, 6, 7))
    nan = {n: a.copy() for n, a in clients[0].items()}
    nan["w"][0, 0] = np.nan
    inf = {n: a.copy() for n, a in clients[0].items()}
    inf["b"][1] = np.inf
    wrong_shape = {"w": np.zeros((3, 4), np.float32), "b": clients[0]["b"]}
    replies = [reply(instructions[i], clients[i], n) for i, n in enumerate((10, 30, 60))] + [
        reply(instructions[3], nan, 10), reply(instructions[4], inf, 10), reply(instructions[5], wrong_shape, 10),
        error_reply(instructions[6])]
    arrays, metrics = strategy.aggregate_train(1, replies)
    for name in reference:
        assert np.array_equal(decode(arrays)[name], clean[name])
    assert (metrics["replies-accepted"], metrics["replies-rejected"], metrics["replies-failed"]) == (3, 3, 1)


def test_clients_that_never_reply_count_as_failed():
    reference, clients = global_and_clients()
    strategy = ReplyGuard(fedavg())
    instructions = send(strategy, reference, node_ids=(1, 2, 3))
    _, metrics = strategy.aggregate_train(1, [reply(instructions[0], clients[0], 10)])  # 2 timed out
    assert (metrics["replies-accepted"], metrics["replies-failed"]) == (1, 2)


def test_no_valid_reply_keeps_the_previous_model():
    reference, clients = global_and_clients()
    strategy = ReplyGuard(GMA(fedavg()))
    instructions = send(strategy, reference, node_ids=(1, 2))
    bad = {"w": clients[0]["w"], "b": np.full(3, np.nan, np.float32)}
    arrays, metrics = strategy.aggregate_train(1, [reply(instructions[0], bad, 10), error_reply(instructions[1])])
    assert arrays is None  # Flower's round loop keeps the previous global model
    assert (metrics["replies-accepted"], metrics["replies-rejected"], metrics["replies-failed"]) == (0, 1, 1)
    assert strategy.train_metrics[1] is metrics


def test_missing_or_bad_num_examples_is_rejected():
    reference, clients = global_and_clients()
    strategy = ReplyGuard(fedavg())
    instructions = send(strategy, reference)
    replies = [reply(instructions[0], clients[0], 10), reply(instructions[1], clients[1], 0),
               reply(instructions[2], clients[2], -5)]
    _, metrics = strategy.aggregate_train(1, replies)
    assert (metrics["replies-accepted"], metrics["replies-rejected"]) == (1, 2)


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("gma", [False, True])
def test_registry_builds_every_combination(name, gma):
    if name == "fedgma" and gma:
        with pytest.raises(ConfigError, match="'gma'"):
            Settings.from_run_config({"strategy": name, "gma": gma})
        return
    if gma and name in ("krum", "multikrum", "bulyan", "qfedavg"):  # masking first would change the rule
        with pytest.raises(ConfigError, match="strategy='.*', gma=true.*refused"):
            build_strategy(Settings.from_run_config({"strategy": name, "gma": gma}))
        return
    strategy = build_strategy(Settings.from_run_config({"strategy": name, "gma": gma}))
    assert isinstance(strategy, ReplyGuard)
    assert isinstance(strategy.strategy, GMA) == gma
    assert isinstance(strategy.strategy, FedGMA) == (name == "fedgma")
    reference, clients = global_and_clients()
    arrays, metrics = run_round(strategy, reference, clients,
                                gradients=clients if name == "fedgma" else None)
    assert set(arrays) == set(reference) and all(np.isfinite(a).all() for a in arrays.values())


def test_gma_keeps_the_clients_metrics_and_counts():
    reference, clients = global_and_clients()
    _, metrics = run_round(ReplyGuard(GMA(fedavg(), tau=0.4)), reference, clients, (10, 30, 60))
    assert metrics["train-loss"] == pytest.approx(1.0) and metrics["replies-accepted"] == 3


def test_strategy_constructors_validate():
    with pytest.raises(TypeError, match="Message-API strategy"):
        GMA(object())
    with pytest.raises(TypeError, match=r"GMA\(ReplyGuard\) is refused"):
        GMA(ReplyGuard(fedavg()))
    with pytest.raises(ValueError, match="tau"):
        GMA(fedavg(), tau=1.5)
    with pytest.raises(ValueError, match="p must"):
        FedGMA(fedavg(), p=-0.1)
    with pytest.raises(ValueError, match="server_lr"):
        FedGMA(fedavg(), server_lr=-1.0)


def _fraction_grid(node_ids):
    grid = grid_with(node_ids)
    grid.send_and_receive.return_value = []
    return grid


def test_the_guard_asks_for_partitions_only_when_reproducible_sampling_is_asked_for():
    reference, _ = global_and_clients()
    for reproducible, queries in ((False, 0), (True, 1)):
        strategy = ReplyGuard(FedAvg(fraction_train=0.5, min_available_nodes=1, min_train_nodes=1),
                              reproducible_sampling=reproducible)
        grid = _fraction_grid(range(1, 7))
        strategy.configure_train(1, encode(reference), ConfigRecord(), grid)
        assert grid.send_and_receive.call_count == queries


def test_reproducible_sampling_leaves_pythons_global_random_as_it_was():
    reference, _ = global_and_clients()
    strategy = ReplyGuard(GMA(FedAvg(fraction_train=0.5, min_available_nodes=1, min_train_nodes=1)),
                          seed=4, reproducible_sampling=True)
    random.seed(123)
    before = random.getstate()
    picked = [sorted(m.metadata.dst_node_id for m in
                     strategy.configure_train(1, encode(reference), ConfigRecord(), _fraction_grid(range(1, 9))))
              for _ in range(2)]
    assert random.getstate() == before
    assert picked[0] == picked[1] and len(picked[0]) == 4  # seeded from (seed, round): the same clients


@pytest.mark.parametrize("make", [
    lambda: ReplyGuard(GMA(fedavg(), tau=0.5), bounds=ReplyBounds(max_examples=20, max_update_norm=0.05)),
    lambda: ReplyGuard(GMA(FedMedian(min_available_nodes=1, min_train_nodes=1), tau=0.5)),
    lambda: ReplyGuard(FedGMA(fedavg(), direction="pseudo-gradient"), bounds=ReplyBounds(max_update_norm=0.05))])
def test_no_strategy_edits_a_reply_it_received(make):
    reference, clients = global_and_clients()
    strategy = make()
    instructions = send(strategy, reference)
    replies = [reply(ins, w, n) for ins, w, n in zip(instructions, clients, (10, 30, 60))]
    before = [(dict(next(iter(m.content.metric_records.values()))),
               {k: bytes(a.data) for k, a in m.content["arrays"].items()}) for m in replies]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    after = [(dict(next(iter(m.content.metric_records.values()))),
              {k: bytes(a.data) for k, a in m.content["arrays"].items()}) for m in replies]
    assert after == before


def test_the_guard_asks_each_node_for_its_partition_once_in_bounded_batches(caplog):
    """At 1,200 nodes: three QUERY batches of at most 500, once; a node that never answers is reported once
    and not asked again in later rounds."""
    from flwr.app import Message, RecordDict

    from fedgma.strategies.guard import QUERY_BATCH

    nodes = list(range(1, 1201))
    batches = []

    def answer(asks, timeout):
        batches.append(len(asks))
        return [Message(RecordDict({"client": ConfigRecord({"partition-id": ask.metadata.dst_node_id - 1})}),
                        reply_to=ask) for ask in asks if ask.metadata.dst_node_id != 7]  # node 7 never answers

    grid = grid_with(nodes)
    grid.send_and_receive.side_effect = answer
    strategy = ReplyGuard(FedAvg(fraction_train=0.01, min_available_nodes=1, min_train_nodes=1),
                          reproducible_sampling=True)
    reference, _ = global_and_clients()
    for server_round in (1, 2, 3):
        strategy.configure_train(server_round, encode(reference), ConfigRecord(), grid)
    assert batches == [QUERY_BATCH, QUERY_BATCH, 200]
    assert len(strategy.partitions) == 1199 and 7 not in strategy.partitions
    assert caplog.text.count("1 of 1200 clients did not report their partition id") == 1


def test_registration_ranks_read_the_simulations_partition_order_and_nothing_else():
    from flwr.proto.node_pb2 import NodeInfo

    from fedgma.strategies.sampling import registration_ranks

    nodes = simulated_nodes([905, 17, 4242, 3])
    assert registration_ranks(reversed(nodes)) == {905: 0, 17: 1, 4242: 2, 3: 3}
    tied = simulated_nodes([1, 2]) + [simulated_nodes([3])[0]]  # node 3 registered in node 1's microsecond
    assert registration_ranks(tied) is None
    real = [NodeInfo(node_id=1, heartbeat_interval=30.0, registered_at=nodes[0].registered_at)]
    assert registration_ranks(nodes[1:] + real) is None  # a real SuperNode: its registration order is chance
    assert registration_ranks([NodeInfo(node_id=1)]) is None  # Flower's base Grid.get_nodes: ids only
    assert registration_ranks([]) is None


def test_reproducible_sampling_in_simulation_asks_no_client_and_picks_the_same_partitions():
    """Two runs of one seed whose virtual nodes got different random ids: the same partitions (registration
    ranks) are sampled every round, and not one QUERY message is sent."""
    reference, _ = global_and_clients()
    rng = np.random.default_rng(0)
    picked = []
    for _ in range(2):
        node_ids = [int(n) for n in rng.choice(2**40, size=1000, replace=False)]
        grid = grid_with(node_ids, simulated_nodes(node_ids))
        strategy = ReplyGuard(FedAvg(fraction_train=0.01, min_available_nodes=1, min_train_nodes=1), seed=3,
                              reproducible_sampling=True)
        rank = {node: i for i, node in enumerate(node_ids)}
        picked.append([sorted(rank[m.metadata.dst_node_id] for m in
                              strategy.configure_train(r, encode(reference), ConfigRecord(), grid)) for r in (1, 2)])
        assert grid.send_and_receive.call_count == 0 and grid.get_nodes.call_count == 1
    assert picked[0] == picked[1] and len(picked[0][0]) == 10 and picked[0][0] != picked[0][1]
