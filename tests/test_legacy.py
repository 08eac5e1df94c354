"""Legacy-API strategies (fedgma.legacy.strategies): same weights as the Message-API strategies for the same client
results, through Flower's real legacy Server round; the legacy app's refusals (it runs end to end in
tests/test_secagg.py, plain and under SecAgg+)."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import layers, reply, send
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam as LegacyFedAdam
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedgma.legacy.strategies import LegacyFedGMA, LegacyGMA
from fedgma.strategies.records import decode
from fedgma.settings import ConfigError, Settings
from fedgma.strategies import GMA, FedGMA


class ScriptedClient(ClientProxy):
    """A client proxy whose fit returns fixed weights (and its gradient when asked)."""

    def __init__(self, cid, weights, gradient, num_examples, partition):
        super().__init__(cid)
        self.weights, self.gradient, self.num_examples, self.partition = weights, gradient, num_examples, partition

    def fit(self, ins, timeout, group_id):
        arrays = self.weights + (self.gradient if ins.config.get("append-gradient") else [])
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), self.num_examples,
                      {"partition-id": self.partition, "train-loss": 0.5})

    def get_properties(self, *args):
        raise NotImplementedError

    get_parameters = evaluate = reconnect = get_properties


def setup(seed=0, k=4):
    rng = np.random.default_rng(seed)
    reference = layers(rng)
    clients = [{n: a + layers(rng, 0.1)[n] for n, a in reference.items()} for _ in range(k)]
    gradients = [layers(rng, 0.5) for _ in range(k)]
    return reference, clients, gradients, [10, 30, 60, 25][:k]


def legacy_round(strategy, reference, clients, gradients, examples):
    manager = SimpleClientManager()
    for i, (w, g, n) in enumerate(zip(clients, gradients, examples)):
        manager.register(ScriptedClient(f"c{i}", list(w.values()), list(g.values()), n, i))
    server = Server(client_manager=manager, strategy=strategy)
    server.parameters = ndarrays_to_parameters(list(reference.values()))
    parameters, metrics, (results, failures) = server.fit_round(server_round=1, timeout=None)
    assert len(results) == len(clients) and not failures
    return dict(zip(reference, parameters_to_ndarrays(parameters))), metrics


def message_round(strategy, reference, clients, gradients, examples, with_gradients):
    instructions = send(strategy, reference, node_ids=tuple(range(1, len(clients) + 1)))
    replies = [reply(ins, w, n, g if with_gradients else None)
               for ins, w, g, n in zip(instructions, clients, gradients, examples)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return decode(arrays), metrics


CASES = {
    "fedgma-gradient": (lambda: LegacyFedGMA(LegacyFedAvg(), p=0.5, server_lr=0.3, direction="gradient"),
                        lambda: FedGMA(FedAvg(), p=0.5, server_lr=0.3, direction="gradient"), True),
    "fedgma-pseudo-gradient": (lambda: LegacyFedGMA(LegacyFedAvg(), p=0.5, server_lr=0.3, direction="pseudo-gradient"),
                               lambda: FedGMA(FedAvg(), p=0.5, server_lr=0.3, direction="pseudo-gradient"), False),
    "gma-fedavg": (lambda: LegacyGMA(LegacyFedAvg(), tau=0.5),
                   lambda: GMA(FedAvg(), tau=0.5), False),
    "gma-fedadam": (lambda: LegacyGMA(LegacyFedAdam(initial_parameters=ndarrays_to_parameters(
                        list(setup()[0].values())), eta=0.05, tau=0.001), tau=0.5, mask="hard"),
                    lambda: GMA(FedAdam(eta=0.05, tau=0.001), tau=0.5, mask="hard"), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_legacy_and_message_strategies_give_the_same_weights(case):
    make_legacy, make_message, with_gradients = CASES[case]
    reference, clients, gradients, examples = setup()
    legacy, legacy_metrics = legacy_round(make_legacy(), reference, clients, gradients, examples)
    message, message_metrics = message_round(make_message(), reference, clients, gradients, examples,
                                             with_gradients)
    for name in reference:
        np.testing.assert_allclose(legacy[name], message[name], rtol=1e-6, atol=1e-7)
        assert legacy[name].dtype == np.float32
    assert legacy_metrics["mask-density"] == pytest.approx(message_metrics["mask-density"])
    assert legacy_metrics["replies-accepted"] == 4 and legacy_metrics["train-loss"] == pytest.approx(0.5)


def test_legacy_wrappers_hand_the_wrapped_strategy_the_real_results_and_metrics():
    """The legacy tutorial's fit_metrics_aggregation_fn sees every client's own metrics, once."""
    seen = []

    def aggregate_metrics(results):
        seen.append([metrics["train-loss"] for _, metrics in results])
        return {"clients": len(results)}

    reference, clients, gradients, examples = setup()
    for strategy in (LegacyGMA(LegacyFedAvg(fit_metrics_aggregation_fn=aggregate_metrics)),
                     LegacyFedGMA(LegacyFedAvg(fit_metrics_aggregation_fn=aggregate_metrics))):
        seen.clear()
        _, metrics = legacy_round(strategy, reference, clients, gradients, examples)
        assert seen == [[0.5] * 4] and metrics["clients"] == 4 and metrics["replies-accepted"] == 4


def test_legacy_wrappers_refuse_what_they_cannot_define():
    from flwr.server.strategy import FedMedian, Krum

    from fedgma.strategies.composition import CompositionError

    with pytest.raises(CompositionError, match=r"GMA\(Krum\) is refused"):
        LegacyGMA(Krum())
    with pytest.raises(CompositionError, match=r"FedGMA\(FedAdam\) is refused"):
        LegacyFedGMA(LegacyFedAdam(initial_parameters=ndarrays_to_parameters([np.zeros(1)])))
    with pytest.raises(CompositionError, match="weighted_agreement=True is refused"):
        LegacyGMA(FedMedian(), weighted_agreement=True)


def test_legacy_screening_counts_and_leaves_out_bad_results():
    reference, clients, gradients, examples = setup()
    clients[1] = {n: np.full_like(a, np.nan) for n, a in clients[1].items()}
    clients[2] = {n: a.astype(np.float64) for n, a in clients[2].items()}
    strategy = LegacyGMA(LegacyFedAvg(), tau=0.0)
    weights, metrics = legacy_round(strategy, reference, clients, gradients, examples)
    assert (metrics["replies-accepted"], metrics["replies-rejected"]) == (2, 2)
    expected = {n: (10 * clients[0][n] + 25 * clients[3][n]) / 35 for n in reference}
    for name in reference:
        np.testing.assert_allclose(weights[name], expected[name], rtol=1e-6)
    assert any("contains NaN" in r for r in strategy.notes[1]["reasons"])
    assert any("dtype float64" in r for r in strategy.notes[1]["reasons"])


@pytest.mark.parametrize("keys", [{"strategy": "krum"}, {"strategy": "fedgma", "fedgma-control": "random-mask"}])
def test_legacy_app_refuses_what_only_the_message_api_app_offers(keys):
    from fedgma.legacy.app import build_legacy_strategy

    with pytest.raises(ConfigError, match="'(strategy|fedgma-control)'"):
        build_legacy_strategy(Settings.from_run_config(keys), [np.zeros(2, np.float32)], None)


def test_legacy_app_refuses_resume_before_round_one_and_writes_no_checkpoint(tmp_path):
    from flwr.app import Context, RecordDict

    from fedgma.legacy.app import legacy_run

    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={
        "resume": True, "output-dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="'resume'.*legacy server app cannot resume"):
        legacy_run(context)
    assert list(tmp_path.iterdir()) == []
