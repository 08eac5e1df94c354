"""Client partitions and server test sets, built once per process and cached.

``client_data`` is what a ClientApp trains on; ``test_sets`` is what the
ServerApp evaluates on. Both are cached (``functools.lru_cache``) so a Ray
worker that hosts many clients builds each partition once, never once per round.
Colours are fixed by (seed, partition id), so every process builds the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..settings import Settings
from .coloring import color_binary, color_multiclass, color_seed_repo, color_seed_repo_test
from .mnist import DataError, load_split
from .partition import partition_indices

__all__ = ["ColoredData", "DataError", "client_data", "test_sets", "num_classes"]

# Stream ids that keep the test sets' randomness apart from every client's.
_OOD_STREAM, _ID_STREAM = 1_000_001, 1_000_002


@dataclass(frozen=True, eq=False)  # identity hash: per-device copies are cached by data set
class ColoredData:
    """uint8 images (N, 3, 28, 28) and int64 labels; ``flip`` is the colour flip
    probability used (binary task; NaN for multiclass). The model sees
    ``images / pixel_divisor``: 255 gives [0, 1]; the seed repository's raw 0 to 255
    inputs use 1."""

    images: np.ndarray
    labels: np.ndarray
    flip: float = float("nan")
    pixel_divisor: float = 255.0


def num_classes(task: str) -> int:
    """Model outputs: 1 logit for the binary task, 10 for multiclass."""
    return 1 if task == "binary" else 10


@lru_cache(maxsize=None)
def client_data(settings: Settings, partition_id: int, num_partitions: int) -> ColoredData:
    """Client ``partition_id``'s coloured training data."""
    train_images, train_digits = load_split(settings.data_dir, "train")
    index = partition_indices(train_digits, settings.partitioner, num_partitions, partition_id,
                              settings.seed, settings.classes_per_client, settings.dirichlet_alpha)
    if settings.max_client_examples:
        index = index[:settings.max_client_examples]
    rng = np.random.default_rng([settings.seed, partition_id])
    images, digits = train_images[index], train_digits[index]
    if settings.task == "binary":
        flip = float(rng.uniform(settings.flip_low, settings.flip_high))
        if settings.preprocessing == "seed-repo":
            return ColoredData(*color_seed_repo(images, digits, flip, rng), flip=flip, pixel_divisor=1.0)
        return ColoredData(*color_binary(images, digits, flip, rng), flip=flip)
    return ColoredData(*color_multiclass(images, digits, rng, training_colours=True))


@lru_cache(maxsize=2)
def test_sets(settings: Settings) -> dict[str, ColoredData]:
    """The server's test sets: ``ood`` (shifted colours) and ``id`` (training-like colours)."""
    test_images, test_digits = load_split(settings.data_dir, "test")
    limit = settings.max_test_examples or len(test_digits)
    images, digits = test_images[:limit], test_digits[:limit]
    ood_rng = np.random.default_rng([settings.seed, _OOD_STREAM])
    id_rng = np.random.default_rng([settings.seed, _ID_STREAM])
    if settings.preprocessing == "seed-repo":
        return {"ood": ColoredData(*color_seed_repo_test(images, digits), flip=1.0, pixel_divisor=1.0),
                "id": ColoredData(*color_seed_repo(images, digits, settings.id_flip, id_rng), flip=settings.id_flip,
                                  pixel_divisor=1.0)}
    if settings.task == "binary":
        return {"ood": ColoredData(*color_binary(images, digits, settings.ood_flip, ood_rng), flip=settings.ood_flip),
                "id": ColoredData(*color_binary(images, digits, settings.id_flip, id_rng), flip=settings.id_flip)}
    return {"ood": ColoredData(*color_multiclass(images, digits, ood_rng, training_colours=False)),
            "id": ColoredData(*color_multiclass(images, digits, id_rng, training_colours=True))}
