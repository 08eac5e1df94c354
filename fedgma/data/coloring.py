"""Colouring grey MNIST digits into the two colored-MNIST tasks of DESIGN.md.

Both functions return uint8 images (N, 3, 28, 28) (converted to floats in [0, 1]
batch by batch at training time) and integer labels, and draw all randomness from
the generator they are given, so the result is fixed by the seed.

* binary: label y = 1 if digit >= 5 else 0; the digit is drawn in the red channel
  for y = 0 and in the green channel for y = 1, swapped with probability
  ``flip``. Unlike the seed repository this keeps the pixel range, permutes (not
  reshapes) to channels-first, and colours by label, not by digit.
* seed repository (``preprocessing="seed-repo"``, opt-in, to reproduce its numbers):
  colour by digit, not label: digits 0 to 4 red and 6 to 9 green, each swapped
  with probability ``flip``, and digit 5 always green (its rule tests ``no < 5``
  and ``no > 5``); its test set is every colour reversed (0 to 4 green, 5 to 9
  red, no randomness); and the (N, 28, 28, 3) pictures are *reshaped*, not
  permuted, to (N, 3, 28, 28), which scatters each pixel's three channel values
  over the three planes. The raw 0 to 255 input scale is the training code's
  part (``ColoredData.scale``).
* irm (Arjovsky et al. 2019, "Invariant Risk Minimization", section 5.2): the
  binary label flipped with probability 0.25 (label noise: shape alone predicts
  it 75% of the time), the colour equal to the noisy label but flipped with the
  environment's probability, and the digit, subsampled to 14 x 14, in one of two
  channels (2 x 14 x 14). IRM's y is 1 for digits 0 to 4 and ours for 5 to 9:
  the task is the same with the classes renamed.
* multiclass (after Arpit et al. 2019): 10 classes; in training every class has
  two foreground and two background colours of its own; at test time foreground
  and background are drawn from a shared set of 10 colours, independent of class.
"""

from __future__ import annotations

import numpy as np

# Fixed palettes (not seeded by the run, so every run and client agrees on them).
_PALETTE_RNG = np.random.default_rng(20190101)
TRAIN_FOREGROUNDS = _PALETTE_RNG.integers(0, 256, size=(10, 2, 3))
TRAIN_BACKGROUNDS = _PALETTE_RNG.integers(0, 256, size=(10, 2, 3))
TEST_COLOURS = _PALETTE_RNG.integers(0, 256, size=(10, 3))


def binary_labels(digits: np.ndarray) -> np.ndarray:
    """y = 1 for digits 5 to 9, 0 for 0 to 4."""
    return (digits >= 5).astype(np.int64)


def color_binary(images: np.ndarray, digits: np.ndarray, flip: float | np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Binary colored MNIST with colour flip probability ``flip`` (one, or one per image)."""
    labels = binary_labels(digits)
    flipped = rng.random(len(labels)) < flip
    channel = labels ^ flipped  # 0 = red, 1 = green
    colored = np.zeros((len(images), 3, 28, 28), dtype=np.uint8)
    colored[np.arange(len(images)), channel] = images
    return colored, labels


#: IRM's label noise: the probability that a label is flipped before colouring.
IRM_LABEL_NOISE = 0.25


def color_irm(images: np.ndarray, digits: np.ndarray, flip: float | np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """IRM's colored MNIST with colour flip probability ``flip`` (one, or one per image): (N, 2, 14, 14)."""
    n = len(digits)
    labels = binary_labels(digits) ^ (rng.random(n) < IRM_LABEL_NOISE)
    channel = labels ^ (rng.random(n) < flip)
    colored = np.zeros((n, 2, 14, 14), dtype=np.uint8)
    colored[np.arange(n), channel] = images[:, ::2, ::2]
    return colored, labels


def color_seed_repo(images: np.ndarray, digits: np.ndarray, flip: float | np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The seed repository's training colouring, reshape included (see the module docstring)."""
    swapped = rng.random(len(digits)) < flip
    red = ((digits < 5) & ~swapped) | ((digits > 5) & swapped)
    return _seed_repo_layout(images, red), binary_labels(digits)


def color_seed_repo_test(images: np.ndarray, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seed repository's test set: every colour reversed (0 to 4 green, 5 to 9 red)."""
    return _seed_repo_layout(images, digits >= 5), binary_labels(digits)


def _seed_repo_layout(images: np.ndarray, red: np.ndarray) -> np.ndarray:
    """Channels-last RGB pictures (red or green), reshaped (not permuted) to (N, 3, 28, 28)."""
    pictures = np.zeros((len(images), 28, 28, 3), dtype=np.uint8)
    pictures[red, :, :, 0] = images[red]
    pictures[~red, :, :, 1] = images[~red]
    return pictures.reshape(len(images), 3, 28, 28)


def color_multiclass(images: np.ndarray, digits: np.ndarray, rng: np.random.Generator,
                     training_colours: bool) -> tuple[np.ndarray, np.ndarray]:
    """Multi-class colored MNIST; ``training_colours=False`` gives the OOD test colouring."""
    n = len(images)
    if training_colours:
        foreground = TRAIN_FOREGROUNDS[digits, rng.integers(0, 2, n)]
        background = TRAIN_BACKGROUNDS[digits, rng.integers(0, 2, n)]
    else:
        foreground = TEST_COLOURS[rng.integers(0, 10, n)]
        background = TEST_COLOURS[rng.integers(0, 10, n)]
    ink = images[:, None, :, :].astype(np.float32) / 255.0
    mixed = ink * foreground[:, :, None, None] + (1.0 - ink) * background[:, :, None, None]
    return np.rint(mixed).astype(np.uint8), digits.astype(np.int64)
