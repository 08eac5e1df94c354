"""Nothing a file hands us can run code or corrupt a run: checkpoints without pickle, verified on load,
written atomically without following planted links; runs never clobber runs; a broken server state is
never reported as healthy."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from conftest import reply, send

from fedgma.checkpoint import CHECKPOINT, OLD_CHECKPOINT, Checkpoint, check_model_arrays, load_checkpoint, \
    random_states, save_checkpoint
from fedgma.model import build_model
from fedgma.outputs import RunRecorder
from fedgma.strategies.records import decode
from fedgma.safe_files import atomic_write
from fedgma.settings import ConfigError, Settings
from fedgma.registry import build_strategy


class Payload:
    """A pickle that, when loaded, creates a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def checkpoint(strategy_state=None):
    model = build_model("binary", seed=0).state_dict()
    return Checkpoint(3, {n: t.numpy() for n, t in model.items()}, strategy_state or {"strategy": {}, "partitions": {}},
                      [{"round": 0, "ood-accuracy": 0.5}], Settings().to_run_config(), {"status": "running"},
                      random_states())


def test_round_trip_keeps_arrays_state_and_random_states(tmp_path):
    strategy = build_strategy(Settings.from_run_config({"strategy": "fedadam", "gma": True}))
    saved = checkpoint(strategy.state() | {"partitions": {4: 1, 9: 0}})
    saved.strategy_state["strategy"]["strategy"]["m_t"] = {"w": np.arange(3.0)}  # GMA wraps FedAdam
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 3 and loaded.rows == saved.rows and loaded.config == saved.config
    assert all(np.array_equal(loaded.arrays[n], a) and loaded.arrays[n].dtype == a.dtype for n, a in saved.arrays.items())
    assert loaded.strategy_state["partitions"] == {4: 1, 9: 0}  # integer keys survive
    assert np.array_equal(loaded.strategy_state["strategy"]["strategy"]["m_t"]["w"], np.arange(3.0))
    assert loaded.random_states["python"] == saved.random_states["python"]
    assert torch.equal(loaded.random_states["torch"], saved.random_states["torch"])
    strategy.restore(loaded.strategy_state, round_offset=3)


def test_an_old_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"round": 1, "payload": Payload(marker)}, tmp_path / OLD_CHECKPOINT)
    with pytest.raises(ConfigError, match="older release, a pickle file"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_a_pickle_hidden_in_the_new_format_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    save_checkpoint(tmp_path, checkpoint())
    with zipfile.ZipFile(tmp_path / CHECKPOINT, "a") as archive:  # an object array: .npy holding a pickle
        with archive.open("a0.npy", "w") as member:
            np.lib.format.write_array(member, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="damaged or not one of this app's"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
    (tmp_path / CHECKPOINT).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ConfigError, match=str(tmp_path / CHECKPOINT)):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_zeroed_bytes_in_the_middle_are_detected_and_the_file_named(tmp_path):
    save_checkpoint(tmp_path, checkpoint())
    path = tmp_path / CHECKPOINT
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"the checkpoint {path} is damaged"):
        load_checkpoint(tmp_path)


def test_an_array_changed_with_a_valid_zip_fails_its_checksum(tmp_path):
    save_checkpoint(tmp_path, checkpoint())
    path = tmp_path / CHECKPOINT
    with np.load(path) as archive:
        files = {name: archive[name] for name in archive.files}
    files["a0"] = files["a0"].copy()
    files["a0"].flat[0] += 1  # a rewritten archive: the zip's CRCs are right, the manifest's SHA-256 is not
    np.savez(path, **files)
    with pytest.raises(ConfigError, match="SHA-256"):
        load_checkpoint(tmp_path)


def test_wrong_shapes_or_types_give_the_named_error(tmp_path):
    broken = checkpoint()
    name = next(iter(broken.arrays))
    broken.arrays[name] = np.zeros((2, 2), np.float32)
    save_checkpoint(tmp_path, broken)
    model = build_model("binary").state_dict()
    with pytest.raises(ConfigError, match=f"layer '{name}'"):
        check_model_arrays(load_checkpoint(tmp_path), model, tmp_path / CHECKPOINT)
    strategy = build_strategy(Settings.from_run_config({"strategy": "fedavgm"}))
    with pytest.raises(ValueError, match="server_learning_rate is a float"):
        strategy.restore({"strategy": {"server_learning_rate": "fast"}, "partitions": {}}, round_offset=1)


def test_a_planted_symlink_is_not_followed(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    folder = tmp_path / "run"
    folder.mkdir()
    for name in (CHECKPOINT + ".tmp", "." + CHECKPOINT + ".tmp", "metrics.json.tmp", "model.pt.tmp"):
        os.symlink(target, folder / name)  # every name an attacker could guess from the old code
    save_checkpoint(folder, checkpoint())
    atomic_write(folder / "metrics.json", "{}")
    assert target.read_text() == "keep me" and load_checkpoint(folder).round == 3
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]  # no leftovers
    assert oct((folder / CHECKPOINT).stat().st_mode & 0o777) == "0o600"


def test_a_failed_save_leaves_no_temporary_file_and_the_old_checkpoint(tmp_path):
    save_checkpoint(tmp_path, checkpoint())
    before = (tmp_path / CHECKPOINT).read_bytes()
    bad = checkpoint()
    bad.report["object"] = object()  # not storable
    with pytest.raises(TypeError, match="cannot hold"):
        save_checkpoint(tmp_path, bad)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


def test_a_fresh_run_never_clobbers_an_earlier_one(tmp_path):
    folder = tmp_path / "run"
    first = RunRecorder(folder, Settings())
    for r in range(51):
        first.record_round({"round": r})
    with pytest.raises(ConfigError, match="already holds a run.*resume=true.*overwrite=true"):
        RunRecorder(folder, Settings())
    assert len(json.loads((folder / "metrics.json").read_text())["rounds"]) == 51
    RunRecorder(folder, Settings.from_run_config({"overwrite": True}))
    assert json.loads((folder / "metrics.json").read_text())["rounds"] == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunRecorder(tmp_path / "file", Settings())


def test_a_poisoned_server_optimiser_keeps_its_previous_state_and_says_so():
    strategy = build_strategy(Settings.from_run_config({"strategy": "fedadam", "gma": True, "min-available-nodes": 1,
                                                        "fedopt-eta": 0.1}))
    reference = {"w": np.zeros(4, np.float32)}
    honest = {"w": np.full(4, 0.1, np.float32)}
    poisoned = {"w": np.full(4, 1e30, np.float32)}  # finite, but its square is not
    ins = send(strategy, reference, node_ids=(1,))
    arrays, metrics = strategy.aggregate_train(1, [reply(ins[0], poisoned)])
    assert arrays is None and "optimiser's state became non-finite" in strategy.notes[1]["outcome"]
    assert (adam := strategy.strategy.strategy).m_t is None or all(np.isfinite(v).all() for v in adam.m_t.values())
    ins = send(strategy, reference, node_ids=(1,), server_round=2)
    arrays, _ = strategy.aggregate_train(2, [reply(ins[0], honest)])
    assert arrays is not None and np.all(decode(arrays)["w"] > 0)  # the next round learns again
    assert strategy.notes[2]["outcome"] == "aggregated"


def test_one_client_cannot_flood_the_records():
    from fedgma.strategies.replies import MAX_REASON

    strategy = build_strategy(Settings.from_run_config({"strategy": "fedavg", "min-available-nodes": 1}))
    reference = {"w": np.zeros(4, np.float32)}
    ins = send(strategy, reference, node_ids=(1, 2))
    flood = reply(ins[0], reference, **{f"metric-{i:05d}-" + "x" * 5: 1.0 for i in range(20000)})
    _, metrics = strategy.aggregate_train(1, [flood, reply(ins[1], reference)])
    assert metrics["replies-rejected"] == 1 and metrics["replies-accepted"] == 1
    reasons = strategy.notes[1]["reasons"]
    assert len(json.dumps(reasons)) < MAX_REASON + 200 and "20002 metrics" in reasons[0]
