"""Validation sets for model selection, IRM's colored MNIST and its MLP: splits disjoint, colours as stated."""

import numpy as np
import pytest
import torch

from fedgma.data import client_data, client_indices, holdout_split
from fedgma.data import test_sets as server_test_sets
from fedgma.data import test_split as split_test_images
from fedgma.data.coloring import IRM_LABEL_NOISE, binary_labels, color_irm
from fedgma.data.mnist import load_split
from fedgma.model import IrmMlp, build_model
from fedgma.settings import ConfigError, Settings


def settings(mnist_dir, **overrides):
    return Settings.from_run_config({"data-dir": str(mnist_dir), **overrides})


@pytest.mark.parametrize("partitioner", ["pathological", "iid"])
def test_training_domain_validation_is_never_a_client_image(mnist_dir, partitioner):
    s = settings(mnist_dir, **{"train-validation-examples": 6000, "partitioner": partitioner})
    digits = load_split(str(mnist_dir), "train")[1]
    pool, held = holdout_split(len(digits), 6000, s.seed)
    assert len(held) == 6000 and len(pool) == 54000 and not np.intersect1d(pool, held).size
    clients = np.concatenate([client_indices(s, digits, pid, 20) for pid in range(20)])
    assert not np.intersect1d(clients, held).size, "a held-out validation image is in a client's partition"
    assert len(np.unique(clients)) == len(clients)  # no image in two clients either
    assert not np.array_equal(holdout_split(60000, 6000, 1)[1], held)  # the split is drawn by the seed


def test_without_validation_the_clients_keep_every_image_as_before(mnist_dir):
    digits = load_split(str(mnist_dir), "train")[1]
    pool, held = holdout_split(len(digits), 0, 0)
    assert np.array_equal(pool, np.arange(60000)) and held.size == 0
    s = settings(mnist_dir)
    before = client_data(s, 3, 10)
    assert "train-val" not in server_test_sets(s) and "test-val" not in server_test_sets(s)
    assert len(before.labels) == len(client_indices(s, digits, 3, 10))


def test_test_domain_validation_is_disjoint_from_the_test_sets(mnist_dir):
    tests, held = split_test_images(10000, 2000)
    assert not np.intersect1d(tests, held).size and len(tests) + len(held) == 10000
    s = settings(mnist_dir, **{"test-validation-examples": 2000, "max-test-examples": 3000})
    sets = server_test_sets(s)
    grey = load_split(str(mnist_dir), "test")[0]
    assert len(sets["ood"].labels) == len(sets["id"].labels) == 3000 and len(sets["test-val"].labels) == 2000
    # The pictures themselves: the test sets show the first images, the validation set the last 2,000.
    assert np.array_equal(sets["ood"].images.max(axis=1), grey[:3000])
    assert np.array_equal(sets["test-val"].images.max(axis=1), grey[8000:])
    assert sets["test-val"].flip == s.ood_flip  # coloured like the OOD test set: oracle selection


def test_training_domain_validation_is_coloured_like_the_clients(mnist_dir):
    s = settings(mnist_dir, **{"train-validation-examples": 5000})
    val = server_test_sets(s)["train-val"]
    green = val.images[:, 1].any(axis=(1, 2))
    flipped = green != val.labels.astype(bool)
    assert s.flip_low <= val.flip <= s.flip_high
    assert abs(flipped.mean() - (s.flip_low + s.flip_high) / 2) < 0.02  # 5,000 images: 4 standard errors


def test_irm_colouring_has_label_noise_and_the_environment_flip():
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 10, 40000)
    images = rng.integers(1, 256, (40000, 28, 28)).astype(np.uint8)
    colored, labels = color_irm(images, digits, 0.2, np.random.default_rng(1))
    assert colored.shape == (40000, 2, 14, 14) and colored.dtype == np.uint8
    noisy = labels != binary_labels(digits)
    assert abs(noisy.mean() - IRM_LABEL_NOISE) < 0.01
    channel = colored[:, 1].any(axis=(1, 2)).astype(np.int64)
    assert abs((channel != labels).mean() - 0.2) < 0.01  # the colour follows the noisy label, flipped 20%
    assert np.array_equal(colored[np.arange(40000), channel], images[:, ::2, ::2])


def test_irm_clients_belong_to_environments_in_turn(mnist_dir):
    s = settings(mnist_dir, task="irm", partitioner="iid", environments="0.1,0.2,0.7",
                 **{"max-client-examples": 3000})
    flips = [client_data(s, pid, 6).flip for pid in range(6)]
    assert flips == [0.1, 0.2, 0.7, 0.1, 0.2, 0.7]
    data = client_data(s, 2, 6)
    colour_agrees = data.images[:, 1].any(axis=(1, 2)) == data.labels.astype(bool)
    assert abs((1 - colour_agrees.mean()) - 0.7) < 0.04
    assert server_test_sets(s)["ood"].images.shape[1:] == (2, 14, 14)


@pytest.mark.parametrize("bad", ["", "0.1,,0.2", "0.1,1.5", "red"])
def test_bad_environments_name_the_key(bad):
    with pytest.raises(ConfigError, match="'environments'"):
        Settings.from_run_config({"task": "irm", "environments": bad})


def test_irm_mlp_is_the_papers_model():
    model = build_model("irm", seed=0)
    assert isinstance(model, IrmMlp)
    assert sum(p.numel() for p in model.parameters()) == 392 * 390 + 390 + 390 * 390 + 390 + 390 + 1
    assert torch.equal(build_model("irm", seed=0).state_dict()["layers.1.weight"], model.state_dict()["layers.1.weight"])
    assert all(not b.any() for n, b in model.state_dict().items() if n.endswith("bias"))
    assert model(torch.rand(5, 2, 14, 14)).shape == (5, 1)
