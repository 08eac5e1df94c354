"""Client partitions and server test sets, built once per process and cached.

``client_data`` is what a ClientApp trains on; ``test_sets`` is what the
ServerApp evaluates on: the OOD and in-distribution test sets and, when asked,
two validation sets for model selection (DomainBed's names, Gulrajani and
Lopez-Paz 2020): a *training-domain* one (MNIST training images held out from
every client before partitioning, coloured like the clients' data: nothing of
the test colours is used) and a *test-domain* one (the last MNIST test images,
coloured like the OOD test set and never part of the test sets: "oracle"
selection). The index splits are pure functions (:func:`holdout_split`,
:func:`test_split`), so their disjointness is tested directly. Both are cached (``functools.lru_cache``) so a Ray
worker that hosts many clients builds each partition once, not once per round; the partition cache is
bounded (``CACHED_PARTITIONS``) so that a worker serving 10,000 virtual clients does not hold them all.
Colours are fixed by (seed, partition id), so every process builds the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..settings import Settings, environment_flips
from .coloring import color_binary, color_irm, color_multiclass, color_seed_repo, color_seed_repo_test
from .mnist import DataError, load_split
from .partition import partition_indices

__all__ = ["ColoredData", "DataError", "client_data", "test_sets", "client_indices", "holdout_split",
           "test_split"]

# Stream ids that keep the test and validation sets' randomness apart from every client's.
_OOD_STREAM, _ID_STREAM, _HOLDOUT_STREAM, _TRAIN_VAL_STREAM, _TEST_VAL_STREAM = (
    1_000_001, 1_000_002, 1_000_003, 1_000_004, 1_000_005)


@dataclass(frozen=True, eq=False)  # identity hash: per-device copies are cached by data set
class ColoredData:
    """uint8 images (N, 3, 28, 28) and int64 labels; ``flip`` is the colour flip
    probability used (binary and irm tasks; the mean where every image has its
    own, as in the training-domain validation set; NaN for multiclass). The model sees
    ``images / pixel_divisor``: 255 gives [0, 1]; the seed repository's raw 0 to 255
    inputs use 1."""

    images: np.ndarray
    labels: np.ndarray
    flip: float = float("nan")
    pixel_divisor: float = 255.0


def holdout_split(size: int, held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices left for the clients, indices held out), both sorted: ``held_out`` of ``range(size)``
    drawn by ``seed``. With nothing held out the clients keep every index, as before validation existed."""
    if not held_out:
        return np.arange(size), np.arange(0)
    order = np.random.default_rng([seed, _HOLDOUT_STREAM]).permutation(size)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def test_split(size: int, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(test indices, test-domain validation indices): the last ``held_out`` images validate."""
    return np.arange(size - held_out), np.arange(size - held_out, size)


def _colour_like_training(settings: Settings, images: np.ndarray, digits: np.ndarray, flip: float | np.ndarray,
                          rng: np.random.Generator) -> ColoredData:
    """Images coloured as the clients' are, with colour flip probability ``flip`` (one, or one per image)."""
    mean_flip = float(np.mean(flip))
    if settings.task == "irm":
        return ColoredData(*color_irm(images, digits, flip, rng), flip=mean_flip)
    if settings.task == "multiclass":
        return ColoredData(*color_multiclass(images, digits, rng, training_colours=True))
    if settings.preprocessing == "seed-repo":
        return ColoredData(*color_seed_repo(images, digits, flip, rng), flip=mean_flip, pixel_divisor=1.0)
    return ColoredData(*color_binary(images, digits, flip, rng), flip=mean_flip)


def _colour_like_ood_test(settings: Settings, images: np.ndarray, digits: np.ndarray,
                          rng: np.random.Generator) -> ColoredData:
    """Images coloured as the OOD test set is."""
    if settings.preprocessing == "seed-repo":
        return ColoredData(*color_seed_repo_test(images, digits), flip=1.0, pixel_divisor=1.0)
    if settings.task == "irm":
        return ColoredData(*color_irm(images, digits, settings.ood_flip, rng), flip=settings.ood_flip)
    if settings.task == "multiclass":
        return ColoredData(*color_multiclass(images, digits, rng, training_colours=False))
    return ColoredData(*color_binary(images, digits, settings.ood_flip, rng), flip=settings.ood_flip)


def _client_flip(settings: Settings, partition_id: int, rng: np.random.Generator) -> float:
    """Client ``partition_id``'s colour flip probability: its environment's (irm), or its own draw."""
    if settings.task == "irm":
        flips = environment_flips(settings.environments)
        return flips[partition_id % len(flips)]
    return float(rng.uniform(settings.flip_low, settings.flip_high)) if settings.task == "binary" else float("nan")


def client_indices(settings: Settings, train_digits: np.ndarray, partition_id: int,
                   num_partitions: int) -> np.ndarray:
    """Indices into the MNIST training set of client ``partition_id``'s images: its partition of the images
    not held out for validation."""
    pool, _ = holdout_split(len(train_digits), settings.train_validation_examples, settings.seed)
    index = pool[partition_indices(train_digits[pool], settings.partitioner, num_partitions, partition_id,
                                   settings.seed, settings.classes_per_client, settings.dirichlet_alpha)]
    return index[:settings.max_client_examples] if settings.max_client_examples else index


#: Partitions one process keeps (about 1.4 MB each at 600 images): every client of the seed's 100-client setup,
#: while a process that serves thousands of virtual clients over a run does not grow with them.
CACHED_PARTITIONS = 256


@lru_cache(maxsize=CACHED_PARTITIONS)
def client_data(settings: Settings, partition_id: int, num_partitions: int) -> ColoredData:
    """Client ``partition_id``'s coloured training data (never an image held out for validation)."""
    train_images, train_digits = load_split(settings.data_dir, "train")
    index = client_indices(settings, train_digits, partition_id, num_partitions)
    rng = np.random.default_rng([settings.seed, partition_id])
    flip = _client_flip(settings, partition_id, rng)
    return _colour_like_training(settings, train_images[index], train_digits[index], flip, rng)


def _training_domain_validation(settings: Settings) -> ColoredData:
    """The held-out training images, each coloured with a flip probability drawn as a client's is: uniform
    in [flip-low, flip-high] (binary), or the environments in turn (irm: as the clients are assigned)."""
    train_images, train_digits = load_split(settings.data_dir, "train")
    _, held = holdout_split(len(train_digits), settings.train_validation_examples, settings.seed)
    rng = np.random.default_rng([settings.seed, _TRAIN_VAL_STREAM])
    if settings.task == "irm":
        environments = np.asarray(environment_flips(settings.environments))
        flips = environments[np.arange(len(held)) % len(environments)]
    else:
        flips = rng.uniform(settings.flip_low, settings.flip_high, size=len(held))
    return _colour_like_training(settings, train_images[held], train_digits[held], flips, rng)


@lru_cache(maxsize=2)
def test_sets(settings: Settings) -> dict[str, ColoredData]:
    """The server's evaluation sets: ``ood`` (shifted colours) and ``id`` (training-like colours) on the same
    test images, and, when configured, ``train-val`` and ``test-val`` (see the module docstring)."""
    test_images, test_digits = load_split(settings.data_dir, "test")
    tests, held = test_split(len(test_digits), settings.test_validation_examples)
    tests = tests[:settings.max_test_examples or len(tests)]
    images, digits = test_images[tests], test_digits[tests]
    ood_rng = np.random.default_rng([settings.seed, _OOD_STREAM])
    id_rng = np.random.default_rng([settings.seed, _ID_STREAM])
    sets = {"ood": _colour_like_ood_test(settings, images, digits, ood_rng),
            "id": _colour_like_training(settings, images, digits, settings.id_flip, id_rng)}
    if settings.train_validation_examples:
        sets["train-val"] = _training_domain_validation(settings)
    if settings.test_validation_examples:
        sets["test-val"] = _colour_like_ood_test(settings, test_images[held], test_digits[held],
                                                 np.random.default_rng([settings.seed, _TEST_VAL_STREAM]))
    return sets
