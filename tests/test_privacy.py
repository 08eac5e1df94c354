"""Differential privacy with Flower's own mechanisms: local DP on every client, central DP without a mask, and
the combinations whose guarantee would not hold refused before round 1."""

import math

import numpy as np
import pytest
from conftest import reply, send
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from fedgma.client_app import local_dp
from fedgma.strategies.records import decode
from fedgma.settings import ConfigError, Settings
from fedgma.registry import build_strategy


@pytest.mark.parametrize("keys, named", [
    ({"dp": "central", "strategy": "fedavg", "gma": True}, "un-noised updates"),
    ({"dp": "central", "strategy": "fedgma"}, "un-noised updates"),
    ({"dp": "local", "strategy": "fedgma", "fedgma-direction": "gradient"}, "pseudo-gradient"),
    ({"dp": "local", "dp-epsilon": 1.0}, "'dp-epsilon'"),
])
def test_combinations_without_a_guarantee_are_refused(keys, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_run_config(keys)


def context(**run_config):
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                   run_config=run_config)


def test_local_dp_clips_and_adds_the_stated_gaussian_noise():
    sent = {"w": np.zeros(20000, np.float32)}
    trained = {"w": np.full(20000, 0.1, np.float32)}  # update norm 14.1, clipped to C = 1
    instruction = send(build_strategy(Settings.from_run_config({"strategy": "fedavg", "min-available-nodes": 1})), sent, node_ids=(1,))[0]
    keys = {"dp": "local", "dp-clipping-norm": 1.0, "dp-epsilon": 0.9, "dp-delta": 1e-3, "strategy": "fedavg"}
    out = local_dp(instruction, context(**keys), lambda msg, ctx: reply(msg, trained))
    noisy = decode(out.content["arrays"])["w"]
    sigma = 2 * 1.0 * math.sqrt(2 * math.log(1.25 / 1e-3)) / 0.9  # sensitivity 2C (the README's statement)
    clipped = 0.1 / np.linalg.norm(trained["w"])  # each coordinate of the clipped update
    assert abs(noisy.std() - sigma) < 0.03 * sigma
    assert abs(noisy.mean() - clipped) < 4 * sigma / math.sqrt(noisy.size)


def test_local_dp_noises_an_update_of_norm_zero_which_flowers_clipping_cannot_divide_by():
    """A client with one label under a saturated model returns the weights it got: LocalDpMod's clipping divides
    by the update's norm (Flower 1.39 to 1.42), and the reply must still leave with the mechanism's noise."""
    sent = {"w": np.full(20000, 0.5, np.float32)}
    instruction = send(build_strategy(Settings.from_run_config({"strategy": "fedavg", "min-available-nodes": 1})), sent, node_ids=(1,))[0]
    keys = {"dp": "local", "dp-clipping-norm": 1.0, "dp-epsilon": 0.9, "dp-delta": 1e-3, "strategy": "fedavg"}
    out = local_dp(instruction, context(**keys), lambda msg, ctx: reply(msg, sent))
    noisy = decode(out.content["arrays"])["w"]
    sigma = 2 * 1.0 * math.sqrt(2 * math.log(1.25 / 1e-3)) / 0.9
    assert abs(noisy.std() - sigma) < 0.03 * sigma
    assert abs(noisy.mean() - 0.5) < 4 * sigma / math.sqrt(noisy.size)


def test_without_dp_the_reply_is_untouched():
    sent = {"w": np.zeros(5, np.float32)}
    trained = {"w": np.arange(5, dtype=np.float32)}
    instruction = send(build_strategy(Settings.from_run_config({"strategy": "fedavg", "min-available-nodes": 1})), sent, node_ids=(1,))[0]
    out = local_dp(instruction, context(strategy="fedavg"), lambda msg, ctx: reply(msg, trained))
    np.testing.assert_array_equal(decode(out.content["arrays"])["w"], trained["w"])


def test_central_dp_wraps_the_strategy_in_flowers_server_side_clipping():
    settings = Settings.from_run_config({"dp": "central", "strategy": "fedavg", "dp-noise-multiplier": 0.5,
                                         "dp-clipping-norm": 2.0, "min-available-nodes": 4})
    strategy = build_strategy(settings)
    assert isinstance(strategy.strategy, DifferentialPrivacyServerSideFixedClipping)
    assert isinstance(strategy.strategy.strategy, FedAvg)
    assert strategy.strategy.num_sampled_clients == 4 and strategy.strategy.clipping_norm == 2.0
    sent = {"w": np.zeros(10000, np.float32)}
    instructions = send(strategy, sent, node_ids=(1, 2, 3, 4))
    replies = [reply(i, {"w": np.full(10000, 1.0, np.float32)}, 10) for i in instructions]
    arrays, _ = strategy.aggregate_train(1, replies)
    new = decode(arrays)["w"]
    # every update (norm 100) clipped to norm 2, then noise of std 0.5 * 2 / 4 on the mean
    assert abs(new.mean() - 2.0 / 100) < 0.01 and abs(new.std() - 0.25) < 0.01
