"""Data: real MNIST files, partitions, colour statistics, determinism, clear errors."""

import gzip
import shutil

import numpy as np
import pytest

from fedgma.data import DataError, client_data
from fedgma.data import test_sets as server_test_sets
from fedgma.data.coloring import binary_labels, color_binary, color_multiclass
from fedgma.data.mnist import load_split
from fedgma.data.partition import partition_indices
from fedgma.settings import Settings


def settings(mnist_dir, **overrides):
    return Settings.from_run_config({"data-dir": str(mnist_dir), **overrides})


def test_real_mnist_loads(mnist_dir):
    train_images, train_digits = load_split(str(mnist_dir), "train")
    test_images, _ = load_split(str(mnist_dir), "test")
    assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    assert train_images.dtype == np.uint8 and set(np.unique(train_digits)) == set(range(10))


def test_pathological_gives_exactly_two_digits_and_about_600_images(mnist_dir):
    labels = load_split(str(mnist_dir), "train")[1]
    seen = set()
    sizes = []
    for pid in range(100):
        index = partition_indices(labels, "pathological", 100, pid, seed=0)
        digits = set(np.unique(labels[index]).tolist())
        assert len(digits) == 2
        seen |= digits
        sizes.append(len(index))
    assert seen == set(range(10))
    assert 300 < np.median(sizes) < 1000 and sum(sizes) <= 60000


def test_iid_and_dirichlet_partitions_cover_the_data(mnist_dir):
    labels = load_split(str(mnist_dir), "train")[1]
    iid = [partition_indices(labels, "iid", 10, pid, 0) for pid in range(10)]
    assert sum(map(len, iid)) == 60000 and len(np.unique(np.concatenate(iid))) == 60000
    dirichlet = [partition_indices(labels, "dirichlet", 10, pid, 0, alpha=0.1) for pid in range(10)]
    assert sum(map(len, dirichlet)) == 60000


def test_partition_id_out_of_range(mnist_dir):
    with pytest.raises(ValueError, match="partition-id 5"):
        partition_indices(load_split(str(mnist_dir), "train")[1], "iid", 5, 5, 0)


def test_binary_colouring_statistics_match_flip_probability():
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 10, 20000)
    images = rng.integers(1, 256, (20000, 28, 28)).astype(np.uint8)
    for flip in (0.15, 0.9):
        colored, labels = color_binary(images, digits, flip, np.random.default_rng(1))
        assert np.array_equal(labels, binary_labels(digits))
        green = colored[:, 1].any(axis=(1, 2))
        assert not colored[:, 2].any() and np.array_equal(green, ~colored[:, 0].any(axis=(1, 2)))
        flipped = green != labels.astype(bool)
        # 4 standard errors of a binomial proportion
        assert abs(flipped.mean() - flip) < 4 * np.sqrt(flip * (1 - flip) / len(digits))
        assert np.array_equal(colored[np.arange(20000), green.astype(int)], images)  # digit kept intact


def test_client_and_test_sets_follow_the_configured_probabilities(mnist_dir):
    s = settings(mnist_dir)
    for pid in range(5):
        data = client_data(s, pid, 10)
        assert 0.1 <= data.flip <= 0.2
        flipped = (data.images[:, 1].any(axis=(1, 2)) != data.labels.astype(bool)).mean()
        assert abs(flipped - data.flip) < 4 * np.sqrt(data.flip * (1 - data.flip) / len(data.labels))
    for name, expected in (("ood", 0.9), ("id", 0.15)):
        data = server_test_sets(s)[name]
        flipped = (data.images[:, 1].any(axis=(1, 2)) != data.labels.astype(bool)).mean()
        assert abs(flipped - expected) < 4 * np.sqrt(expected * (1 - expected) / 10000)


def test_data_is_deterministic_for_a_seed(mnist_dir):
    a = client_data(settings(mnist_dir, seed=3), 2, 10)
    client_data.cache_clear()
    b = client_data(settings(mnist_dir, seed=3), 2, 10)
    c = client_data(settings(mnist_dir, seed=4), 2, 10)
    assert np.array_equal(a.images, b.images) and a.flip == b.flip
    assert a.flip != c.flip


def test_multiclass_colours_are_class_specific_in_training_only(mnist_dir):
    test_images, test_digits = load_split(str(mnist_dir), "test")
    images, digits = test_images[:3000], test_digits[:3000]
    train, _ = color_multiclass(images, digits, np.random.default_rng(0), training_colours=True)
    test, labels = color_multiclass(images, digits, np.random.default_rng(0), training_colours=False)
    corner = lambda x: [tuple(px) for px in x[:, :, 0, 0]]  # background colour (corner pixel is blank)
    train_bg, test_bg = corner(train), corner(test)
    for digit in range(10):
        mine = {c for c, d in zip(train_bg, labels) if d == digit}
        others = {c for c, d in zip(train_bg, labels) if d != digit}
        assert len(mine) <= 2 and not mine & others
    assert len(set(test_bg)) > 2 * 4  # drawn from the shared palette, independent of class


def test_multiclass_task_builds(mnist_dir):
    s = settings(mnist_dir, task="multiclass", **{"max-test-examples": 100})
    assert set(np.unique(client_data(s, 0, 10).labels)) <= set(range(10))
    assert server_test_sets(s)["ood"].images.shape == (100, 3, 28, 28)


def test_missing_and_corrupt_files_are_named(tmp_path, mnist_dir):
    with pytest.raises(DataError, match="is not a folder"):
        load_split(str(tmp_path / "nowhere"), "test")
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(DataError, match="missing: .*t10k-labels-idx1-ubyte.gz"):
        load_split(str(tmp_path), "test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip"):
        load_split(str(tmp_path), "test")
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write((2049).to_bytes(4, "big") + (10000).to_bytes(4, "big") + bytes(100))  # truncated
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_split(str(tmp_path), "test")


def test_a_split_needs_only_its_own_files(tmp_path, mnist_dir):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path)
    assert load_split(str(tmp_path), "test")[0].shape == (10000, 28, 28)  # the server's view: no training files
    with pytest.raises(DataError, match="missing: .*train-images-idx3-ubyte.gz"):
        load_split(str(tmp_path), "train")


def test_default_path_uses_torchvision_files_already_in_its_cache(tmp_path, mnist_dir, monkeypatch):
    """The offline recipe of the README: the IDX files in <root>/MNIST/raw need no network."""
    import fedgma.data.mnist as mnist

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, raw)
    monkeypatch.setattr(mnist, "DEFAULT_ROOT", tmp_path)
    load_split.cache_clear()
    images, digits = load_split("", "test")
    assert images.shape == (10000, 28, 28)
    assert np.array_equal(digits, load_split(str(mnist_dir), "test")[1])
