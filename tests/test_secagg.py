"""Masking under Flower's SecAgg+ (fedgma.strategies.secagg, the legacy strategies' ``secagg`` mode, the legacy
app's ``secagg=true``): the server's math from sums alone equals the plain math, the client's payload, the checks,
and real SecAgg+ rounds in Flower's simulation engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ONE_ACTOR, REPO, layers
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, MessageType, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam as LegacyFedAdam
from flwr.server.strategy import FedAvg as LegacyFedAvg

from fedgma.legacy.strategies import LegacyFedGMA, LegacyGMA, LegacyGuard
from fedgma.settings import ConfigError, Settings
from fedgma.strategies.secagg import SecAggPlus, check_within_clipping, secagg_reply_mod, secure_payload
from fedgma.tools.local_flower import LocalFlower

SECAGG = SecAggPlus(max_weight=100.0)


class Proxy(ClientProxy):
    def get_properties(self, *args):
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


def clients_setup(seed=0, k=5):
    rng = np.random.default_rng(seed)
    reference = list(layers(rng).values())
    weights = [[a + rng.normal(0, 0.1, a.shape).astype(np.float32) for a in reference] for _ in range(k)]
    gradients = [[rng.normal(0, 0.5, a.shape).astype(np.float32) for a in reference] for _ in range(k)]
    return reference, weights, gradients, [10, 30, 60, 25, 90][:k]


def fit_round(strategy, reference, weights, gradients, examples, secure: bool):
    """One round of ``strategy``: plain (each client's own arrays), or as SecAgg+ hands it over (every result
    carries the exact example-weighted mean of the clients' payloads, float64; quantization left out)."""
    manager = SimpleClientManager()
    for i in range(len(weights)):
        manager.register(Proxy(f"c{i}"))
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(reference), manager)
    config = instructions[0][1].config
    sent = [w + (g if config.get("append-gradient") else []) for w, g in zip(weights, gradients)]
    if secure:
        payloads = [secure_payload(config, reference, arrays, n) for arrays, n in zip(sent, examples)]
        total = sum(examples)
        summed = [sum(n * p[i].astype(np.float64) for p, n in zip(payloads, examples)) / total
                  for i in range(len(payloads[0]))]
        sent = [summed] * len(weights)
    results = [(proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {"partition-id": i}))
               for i, ((proxy, _), arrays, n) in enumerate(zip(sorted(instructions, key=lambda x: x[0].cid), sent,
                                                                examples))]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    return (None if parameters is None else parameters_to_ndarrays(parameters)), metrics


STRATEGIES = {
    "gma-fedavg": lambda secagg, weighted: LegacyGMA(LegacyFedAvg(), tau=0.6, weighted_agreement=weighted,
                                                     secagg=secagg),
    "gma-fedadam-hard": lambda secagg, weighted: LegacyGMA(
        LegacyFedAdam(initial_parameters=ndarrays_to_parameters(clients_setup()[0]), eta=0.05, tau=0.001),
        tau=0.6, mask="hard", weighted_agreement=weighted, secagg=secagg),
    "fedgma-gradient": lambda secagg, weighted: LegacyFedGMA(LegacyFedAvg(), p=0.6, server_lr=0.3,
                                                             weighted_agreement=weighted, secagg=secagg),
    "fedgma-pseudo-gradient": lambda secagg, weighted: LegacyFedGMA(
        LegacyFedAvg(), p=0.6, server_lr=0.3, direction="pseudo-gradient", weighted_agreement=weighted,
        secagg=secagg),
    "fedavg": lambda secagg, weighted: LegacyGuard(LegacyFedAvg(), secagg),
}


@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "examples"])
@pytest.mark.parametrize("case", list(STRATEGIES))
def test_masks_from_secure_sums_equal_the_plain_masks(case, weighted):
    reference, weights, gradients, examples = clients_setup()
    plain, plain_metrics = fit_round(STRATEGIES[case](None, weighted), reference, weights, gradients, examples, False)
    secure, secure_metrics = fit_round(STRATEGIES[case](SECAGG, weighted), reference, weights, gradients, examples,
                                       True)
    for a, b in zip(plain, secure):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for key in ("mask-density", "mean-agreement"):
        assert secure_metrics.get(key) == pytest.approx(plain_metrics.get(key), abs=1e-6)
    assert secure_metrics["replies-accepted"] == 5


def test_uniform_agreement_is_an_exact_count_even_off_by_quantization_noise():
    counts = np.array([-5, -3, 0, 1, 5], dtype=np.float64)  # sum of 5 clients' signs per coordinate
    examples = [10, 30, 60, 25, 90]
    noisy_mean = counts * SECAGG.max_weight / sum(examples) + np.array([3e-4, -3e-4, 2e-4, -1e-4, 0])
    np.testing.assert_array_equal(SECAGG.agreement(noisy_mean, sum(examples), 5, uniform=True),
                                  np.abs(counts) / 5)
    with pytest.raises(ValueError, match="count up to 9 for 5 clients"):
        SECAGG.agreement(np.array([9 * SECAGG.max_weight / sum(examples)]), sum(examples), 5, uniform=True)


def test_the_guard_refuses_results_that_were_not_securely_summed():
    reference, weights, gradients, examples = clients_setup(k=3)
    strategy = LegacyGMA(LegacyFedAvg(), tau=0.6, secagg=SECAGG)
    manager = SimpleClientManager()
    for i in range(3):
        manager.register(Proxy(f"c{i}"))
    config = strategy.configure_fit(1, ndarrays_to_parameters(reference), manager)[0][1].config
    own = [secure_payload(config, reference, w, n) for w, n in zip(weights, examples)]  # each client's in clear
    results = [(Proxy(f"c{i}"), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(p), n, {}))
               for i, (p, n) in enumerate(zip(own, examples))]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert parameters is None and metrics["replies-rejected"] == 3 and metrics["replies-accepted"] == 0
    assert "not securely summed" in strategy.notes[1]["reasons"][0]


def test_a_halted_secagg_round_is_recorded_not_hidden():
    strategy = LegacyGuard(LegacyFedAvg(), SECAGG)  # SecAggPlusWorkflow halted: aggregate_fit never called
    strategy.evaluate(1, ndarrays_to_parameters([np.zeros(2, np.float32)]))
    assert strategy.train_metrics[1]["replies-accepted"] == 0
    assert "ended without aggregation" in strategy.notes[1]["outcome"]


def test_one_failure_reported_twice_by_secaggplus_counts_once():
    error = object()  # SecAggPlusWorkflow wraps the same Error object in two exceptions
    strategy = LegacyGuard(LegacyFedAvg(), SECAGG)
    strategy.current = [np.zeros(2, np.float32)]
    _, metrics = strategy.aggregate_fit(1, [], [Exception(error), Exception(error)])
    assert metrics["replies-failed"] == 1


def test_the_client_payload_appends_scaled_signs_and_refuses_what_secagg_would_clip():
    reference = [np.zeros(3, np.float32)]
    config = SECAGG.fit_config("update", uniform=True)
    payload = secure_payload(config, reference, [np.array([0.5, -0.2, 0.0], np.float32)], num_examples=25)
    np.testing.assert_allclose(payload[1], [4.0, -4.0, 0.0])  # sign x max_weight / n = 100 / 25
    weighted = secure_payload(SECAGG.fit_config("update", uniform=False), reference,
                              [np.array([0.5, -0.2, 0.0], np.float32)], 25)
    np.testing.assert_allclose(weighted[1], [1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="SecAgg\\+ would clip this reply.*9 / 100.*secagg-clipping-range 8"):
        check_within_clipping([np.array([100.0])], 9, 100.0, 8.0)
    with pytest.raises(ValueError, match="would clip"):
        check_within_clipping([np.array([np.nan])], 9, 100.0, 8.0)


def test_the_client_mod_turns_a_legacy_reply_into_the_secure_payload():
    reference = [np.zeros(2, np.float32)]
    fit_ins = FitIns(ndarrays_to_parameters(reference), dict(SECAGG.fit_config("update", uniform=True)))
    msg = Message(compat.fitins_to_recorddict(fit_ins, keep_input=True), dst_node_id=1,
                  message_type=MessageType.TRAIN)

    def client(message, context):
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.array([0.3, -0.1], np.float32)]), 50, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=message)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    out = secagg_reply_mod(msg, context, client)
    arrays = parameters_to_ndarrays(compat.recorddict_to_fitres(out.content, keep_input=True).parameters)
    np.testing.assert_allclose(arrays[1], [2.0, -2.0])
    plain = Message(RecordDict({"x": ConfigRecord({"a": 1})}), dst_node_id=1, message_type=MessageType.TRAIN)
    assert secagg_reply_mod(plain, context, lambda m, c: "untouched") == "untouched"


@pytest.mark.parametrize("keys, message", [
    ({"secagg": True, "strategy": "krum"}, "'secagg'.*needs every client's reply"),
    ({"secagg": True, "secagg-num-shares": 3, "secagg-reconstruction-threshold": 3},
     "'secagg-reconstruction-threshold'"),
])
def test_settings_refuse_what_secure_aggregation_cannot_do(keys, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_run_config(keys)


def test_the_message_api_app_points_to_the_legacy_app_for_secagg():
    from fedgma.registry import build_strategy

    with pytest.raises(ConfigError, match="'secagg'.*legacy API only.*examples/legacy"):
        build_strategy(Settings.from_run_config({"secagg": True}))


def _final_weights(folder):
    return torch.load(folder / "model.pt", weights_only=True)


@pytest.mark.simulation
def test_the_legacy_app_runs_fedgma_under_secagg_equal_to_the_plain_run(mnist_dir, tmp_path):
    """The legacy app end to end in Flower's simulation engine, plain and with real SecAgg+: FedGMA in its gradient
    direction (weights, gradients and signs all securely summed; the mask acting). One round, so both runs start
    from the same model and the clients train identically: the only difference is SecAgg+'s quantization."""
    config = {"data-dir": str(mnist_dir), "num-server-rounds": 1, "max-client-examples": 150, "max-test-examples": 300,
              "secagg-max-weight": 150.0, "strategy": "fedgma", "p": 0.3, "server-lr": 1.0}
    with LocalFlower() as flower:
        for secagg in (False, True):
            done = flower.run(REPO / "examples" / "legacy", config | {"secagg": secagg,
                                                                     "output-dir": str(tmp_path / str(secagg))}, 3, ONE_ACTOR)
            assert flower.runs()[0]["status"] == "finished:completed", done.output[-4000:]
    plain_out, secure_out = tmp_path / "False", tmp_path / "True"
    report = json.loads((plain_out / "metrics.json").read_text())  # the legacy app writes the main app's outputs
    assert report["status"] == "completed" and [r["round"] for r in report["rounds"]] == [0, 1]
    assert (plain_out / "accuracy.png").read_bytes()[:4] == b"\x89PNG" and (plain_out / "model.pt").stat().st_size > 2e6
    assert not list(plain_out.glob("checkpoint*"))  # the legacy app cannot resume, so it writes no checkpoint
    plain, secure = report["rounds"][1], json.loads((secure_out / "metrics.json").read_text())["rounds"][1]
    assert secure["replies-accepted"] == 3 and secure["outcome"] == "aggregated"  # one identical sum of 3 clients
    assert secure["mask-density"] == plain["mask-density"] and secure["mean-agreement"] == plain["mean-agreement"]
    assert 0 < secure["mask-density"] < 1 and 0 <= secure["ood-accuracy"] <= 1
    deviation = max(float((a - b).abs().max()) for a, b in zip(_final_weights(plain_out).values(),
                                                               _final_weights(secure_out).values()))
    # w_bar - eta_s m g_bar with eta_s = 1: the errors of two securely averaged means
    assert 0 < deviation <= 2 * SecAggPlus(max_weight=150.0).error_bound(3, 3 * 150), deviation
