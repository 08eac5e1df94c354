"""Fault injection with constructed replies, corrupted files and bad run configs.

Every fault must end in a counted failure with its reason in the round's notes,
or in a clear error naming the cause; the global model must stay the one the
accepted replies give (or the previous one when none is usable).
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil

import numpy as np
import pytest
from conftest import error_reply, layers, reply, send
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedgma.data import DataError
from fedgma.data.mnist import load_split
from fedgma.strategies.records import decode, encode
from fedgma.settings import ConfigError, Settings
from fedgma.strategies import GMA, FedGMA, ReplyGuard

GUARDS = {
    "fedavg": lambda **kw: ReplyGuard(FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=1.0,
                                             min_evaluate_nodes=1), **kw),
    "fedgma": lambda **kw: ReplyGuard(FedGMA(FedAvg(min_available_nodes=1, min_train_nodes=1), p=0.5,
                                             server_lr=0.1, direction="pseudo-gradient"), **kw),
    "gma-fedadam": lambda **kw: ReplyGuard(GMA(FedAdam(min_available_nodes=1, min_train_nodes=1, eta=0.01)), **kw),
}


def model_and_clients(k=3, seed=0):
    rng = np.random.default_rng(seed)
    reference = layers(rng)
    clients = [{n: a + layers(rng, 0.1)[n] for n, a in reference.items()} for _ in range(k)]
    return reference, clients


def _extra_record(instruction, weights):
    content = RecordDict({"arrays": encode(weights), "other": encode(weights),
                          "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0})})
    return Message(content, reply_to=instruction)


def _examples_in_the_wrong_record(instruction, weights):
    """num-examples as text (a MetricRecord cannot hold text, so it comes in a ConfigRecord)."""
    content = RecordDict({"arrays": encode(weights), "metrics": MetricRecord({"train-loss": 1.0}),
                          "config": ConfigRecord({"num-examples": "ten"})})
    return Message(content, reply_to=instruction)


#: (fault, build(instruction, weights) -> reply) for every malformed train reply we can build.
FAULTS = [
    ("error", lambda ins, w: error_reply(ins)),
    ("missing array", lambda ins, w: reply(ins, {k: v for k, v in w.items() if k != "b"}, 10)),
    ("extra ArrayRecord", _extra_record),
    ("misnamed array", lambda ins, w: reply(ins, {("W" if k == "w" else k): v for k, v in w.items()}, 10)),
    ("wrong shape", lambda ins, w: reply(ins, {"w": np.zeros((3, 4), np.float32), "b": w["b"]}, 10)),
    ("float64", lambda ins, w: reply(ins, {k: v.astype(np.float64) for k, v in w.items()}, 10)),
    ("float16", lambda ins, w: reply(ins, {k: v.astype(np.float16) for k, v in w.items()}, 10)),
    ("NaN", lambda ins, w: reply(ins, {"w": w["w"], "b": np.full(3, np.nan, np.float32)}, 10)),
    ("Inf", lambda ins, w: reply(ins, {"w": np.full((4, 3), np.inf, np.float32), "b": w["b"]}, 10)),
    ("zero examples", lambda ins, w: reply(ins, w, 0)),
    ("negative examples", lambda ins, w: reply(ins, w, -5)),
    ("NaN examples", lambda ins, w: reply(ins, w, float("nan"))),
    ("text examples", _examples_in_the_wrong_record),
    ("NaN metric", lambda ins, w: reply(ins, w, 10, **{"train-loss": float("nan")})),
    ("other metric names", lambda ins, w: reply(ins, w, 10, surprise=1.0)),
]


@pytest.mark.parametrize("name", list(GUARDS))
def test_every_malformed_train_reply_is_counted_with_its_reason_and_left_out(name):
    reference, clients = model_and_clients()
    clean_strategy, faulty_strategy = GUARDS[name](), GUARDS[name]()
    clean_instr = send(clean_strategy, reference, node_ids=(1, 2, 3))
    clean_arrays, _ = clean_strategy.aggregate_train(1, [reply(clean_instr[i], clients[i], n)
                                                          for i, n in enumerate((10, 30, 60))])
    instructions = send(faulty_strategy, reference, node_ids=tuple(range(1, 4 + len(FAULTS))))
    replies = [reply(instructions[i], clients[i], n) for i, n in enumerate((10, 30, 60))]
    replies += [build(instructions[3 + i], clients[0]) for i, (_, build) in enumerate(FAULTS)]
    arrays, metrics = faulty_strategy.aggregate_train(1, replies[::-1])  # arrival order must not matter
    for layer in reference:
        assert np.array_equal(decode(arrays)[layer], decode(clean_arrays)[layer]), layer
        assert decode(arrays)[layer].dtype == np.float32
    assert metrics["replies-accepted"] == 3
    assert metrics["replies-failed"] == 1 and metrics["replies-rejected"] == len(FAULTS) - 1
    notes = faulty_strategy.notes[1]
    assert notes["outcome"] == "aggregated" and len(notes["reasons"]) == len(FAULTS)
    text = "\n".join(notes["reasons"])
    for expected in ("client crashed", "ArrayRecord 'arrays' has layers", "expected one of weights", "has shape",
                     "has dtype float64, expected float32", "has dtype float16", "contains NaN or Inf",
                     "'num-examples' must be a positive finite number, got 0", "got -5", "got nan", "got None",
                     "metric 'train-loss' is not finite", "differ from the other replies'"):
        assert expected in text, expected


def test_every_client_failing_keeps_the_model_and_says_why():
    reference, clients = model_and_clients()
    strategy = GUARDS["gma-fedadam"]()
    instructions = send(strategy, reference, node_ids=(1, 2, 3))
    arrays, metrics = strategy.aggregate_train(1, [error_reply(i) for i in instructions[:2]])  # third: timed out
    assert arrays is None
    assert (metrics["replies-accepted"], metrics["replies-failed"]) == (0, 3)
    assert strategy.notes[1]["outcome"].startswith("kept the previous model: 0 of 3 replies accepted")
    assert "did not reply before the round timeout" in strategy.notes[1]["reasons"][-1]


def test_min_accepted_fraction_keeps_the_previous_model_below_it():
    reference, clients = model_and_clients(k=4)
    strategy = GUARDS["fedavg"](min_accepted_fraction=0.75)
    instructions = send(strategy, reference, node_ids=(1, 2, 3, 4))
    replies = [reply(instructions[i], clients[i], 10) for i in range(2)] + [error_reply(instructions[2])]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics["replies-accepted"] == 2
    assert "2 of 4 replies accepted, 3 needed (min-accepted-fraction 0.75)" in strategy.notes[1]["outcome"]
    instructions = send(strategy, reference, node_ids=(1, 2, 3, 4))
    arrays, _ = strategy.aggregate_train(2, [reply(instructions[i], clients[i], 10) for i in range(3)])
    assert arrays is not None and strategy.notes[2]["outcome"] == "aggregated"


def test_fedadam_float64_aggregate_is_cast_back_to_the_models_dtype():
    reference, clients = model_and_clients()
    strategy = GUARDS["gma-fedadam"]()
    instructions = send(strategy, reference)
    arrays, _ = strategy.aggregate_train(1, [reply(instructions[i], clients[i], 10) for i in range(3)])
    assert all(a.dtype == np.float32 for a in decode(arrays).values())


def test_malformed_evaluate_replies_are_screened_instead_of_stopping_the_run():
    strategy = GUARDS["fedavg"]()
    reference, _ = model_and_clients()
    instructions = list(strategy.configure_evaluate(1, encode(reference), ConfigRecord(),
                                                    _grid((1, 2, 3, 4, 5))))

    def evaluation(instruction, **metrics):
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=instruction)

    replies = [evaluation(instructions[0], **{"num-examples": 10, "local-accuracy": 0.5}),
               evaluation(instructions[1], **{"num-examples": 30, "local-accuracy": 0.9}),
               evaluation(instructions[2], **{"local-accuracy": 0.1}),  # no num-examples
               evaluation(instructions[3], **{"num-examples": 10, "local-accuracy": float("nan")}),
               error_reply(instructions[4])]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["local-accuracy"] == pytest.approx(0.8)
    assert (metrics["evaluate-replies-accepted"], metrics["evaluate-replies-rejected"],
            metrics["evaluate-replies-failed"]) == (2, 2, 1)
    assert len(strategy.notes[1]["evaluate-reasons"]) == 3


def test_replies_are_aggregated_in_partition_order_whatever_the_arrival_order():
    reference, clients = model_and_clients(k=5, seed=3)
    results = []
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        strategy = GUARDS["fedgma"]()
        instructions = send(strategy, reference, node_ids=(11, 12, 13, 14, 15))
        replies = []
        for i in order:
            message = reply(instructions[i], clients[i], 10 + 7 * i)
            message.content["client"] = ConfigRecord({"partition-id": 4 - i})
            replies.append(message)
        arrays, _ = strategy.aggregate_train(1, replies)
        results.append({k: v.tobytes() for k, v in decode(arrays).items()})
    assert results[0] == results[1]


def test_strategy_state_survives_a_restore():
    """Round 2 of a restored FedAdam equals round 2 of the one that never stopped."""
    reference, clients = model_and_clients()
    never_stopped = GUARDS["gma-fedadam"]()
    instructions = send(never_stopped, reference)
    first, _ = never_stopped.aggregate_train(1, [reply(instructions[i], clients[i], 10) for i in range(3)])
    state = never_stopped.state()
    restored = GUARDS["gma-fedadam"]()
    restored.restore(state, round_offset=1)

    def round_two(strategy, flower_round):
        global_now = decode(first)
        instructions = send(strategy, global_now, server_round=flower_round)
        moved = [{k: v + 0.05 * (i + 1) for k, v in clients[i].items()} for i in range(3)]
        arrays, _ = strategy.aggregate_train(flower_round, [reply(instructions[i], moved[i], 10) for i in range(3)])
        return decode(arrays)

    expected, got = round_two(never_stopped, 2), round_two(restored, 1)  # Flower restarts at round 1
    for layer in expected:
        assert np.array_equal(expected[layer], got[layer])


def _grid(node_ids):
    from conftest import grid_with

    return grid_with(node_ids)


# --- run config: every key, wrong type and out of range, generated from the declarations ----------
def _bad_values(spec: dataclasses.Field) -> list[tuple[object, str]]:
    kind = {"int": int, "float": float, "str": str, "bool": bool}[spec.type]
    wrong_type = {int: "three", float: "0.5", str: 3, bool: "yes"}[kind]
    bad = [(wrong_type, f"must be a {spec.type}")]
    meta = spec.metadata
    if meta["choices"]:
        bad.append(("no-such-choice", "allowed values"))
    if meta["low"] is not None:
        bad.append((kind(meta["low"] - 1) if not meta["low_open"] else kind(meta["low"]), "it must be >"))
    if meta["high"] is not None:
        bad.append((kind(meta["high"] + 1), "it must be <="))
    return bad


CASES = [(f.name.replace("_", "-"), value, message) for f in dataclasses.fields(Settings)
         for value, message in _bad_values(f)]


@pytest.mark.parametrize("key, value, message", CASES, ids=[f"{k}={v!r}" for k, v, _ in CASES])
def test_every_bad_run_config_value_names_its_key(key, value, message):
    with pytest.raises(ConfigError, match=f"Run-config key '{key}'.*{message}"):
        Settings.from_run_config({key: value})


# --- data files ---------------------------------------------------------------------------------
def test_truncated_and_swapped_idx_files_are_named(tmp_path, mnist_dir):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])  # a download cut in half
    load_split.cache_clear()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip"):
        load_split(str(tmp_path), "test")
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", labels)  # another file's content
    load_split.cache_clear()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt: expected IDX magic number 2049"):
        load_split(str(tmp_path), "test")


def test_wrong_md5_in_the_torchvision_cache_is_named_without_a_download(tmp_path, mnist_dir, monkeypatch):
    import fedgma.data.mnist as mnist

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, raw)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "ab") as handle:
        handle.write(b"\0")  # still a valid gzip, another md5
    monkeypatch.setattr(mnist, "DEFAULT_ROOT", tmp_path)
    load_split.cache_clear()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz has md5 .* expected ec29112dd5afa0611ce80d1b7f02629c"):
        load_split("", "test")
    load_split.cache_clear()
