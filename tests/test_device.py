"""Run-config key ``device``: resolution, the clear error without a GPU, and training on the resolved device.

Tests run on the CPU only; the CUDA path is resolved but never required.
"""

import numpy as np
import pytest
import torch

from fedgma.data import ColoredData
from fedgma.model import build_model
from fedgma.settings import ConfigError, Settings
from fedgma.machine import resolve_device
from fedgma.training import as_tensors, evaluate, prepare_model, train_local


def test_auto_falls_back_to_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_names_the_key_and_the_way_out(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"'device' is 'cuda' but torch .* sees no GPU.*'auto' or 'cpu'"):
        resolve_device("cuda")


def test_the_settings_accept_only_known_devices():
    assert Settings.from_run_config({"device": "cpu"}).device == "cpu"
    with pytest.raises(ConfigError, match="device"):
        Settings.from_run_config({"device": "tpu"})


def test_server_stops_before_round_one_when_cuda_is_missing(monkeypatch):
    """The ServerApp resolves the device before it builds the strategy or touches any client."""
    import fedgma.server_app as server_app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(server_app, "_start", lambda settings: pytest.fail("started a run without a device"))

    class Context:
        run_config = {"device": "cuda"}

    with pytest.raises(ConfigError, match="'device' is 'cuda'"):
        server_app.main(None, Context())


def test_cpu_tensors_are_zero_copy_views():
    data = ColoredData(np.zeros((4, 3, 28, 28), np.uint8), np.zeros(4, np.int64))
    images, labels = as_tensors(data, torch.device("cpu"))
    assert images.data_ptr() == data.images.__array_interface__["data"][0]
    assert labels.data_ptr() == data.labels.__array_interface__["data"][0]


def test_training_and_evaluation_run_where_the_model_is():
    rng = np.random.default_rng(0)
    data = ColoredData(rng.integers(0, 256, (16, 3, 28, 28), dtype=np.uint8), rng.integers(0, 2, 16))
    model = prepare_model(build_model("binary", seed=0), resolve_device("cpu"))
    result = train_local(model, data, epochs=2, batch_size=8, optimizer="adam", lr=1e-3)
    assert set(result.last_gradient) == {name for name, _ in model.named_parameters()}
    assert all(isinstance(g, np.ndarray) for g in result.last_gradient.values())
    loss, accuracy = evaluate(model, data)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
