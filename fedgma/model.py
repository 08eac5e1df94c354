"""The seed repository's CNN for 3 x 28 x 28 colored MNIST.

conv 5x5 (32) -> ReLU -> max-pool 2 -> conv 5x5 (64) -> ReLU -> max-pool 2 ->
dense 512 (ReLU) -> ``num_outputs`` logits. With one logit (the binary task) it
has 579,009 parameters, as in the seed repository; ten logits serve the
multiclass task.

Each convolution block pools before its ReLU. The two commute exactly (ReLU is
monotone, so the maximum of ReLUs is the ReLU of the maximum, and the gradient
reaches the same input element or is zero either way), so outputs and gradients
are bit-for-bit those of the seed's order (:func:`seed_layer_order`,
``tests/test_model.py``), while the ReLU and its backward pass touch a quarter
of the elements (the time saved is measured by ``python -m fedgma.bench``).
"""

from __future__ import annotations

import torch
from torch import nn


class ColoredMnistCnn(nn.Module):
    def __init__(self, num_outputs: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 512), nn.ReLU(),
                                        nn.Linear(512, num_outputs))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def build_model(num_outputs: int = 1, seed: int | None = None) -> ColoredMnistCnn:
    """A freshly initialised CNN; with ``seed`` the initial weights are reproducible."""
    if seed is None:
        return ColoredMnistCnn(num_outputs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ColoredMnistCnn(num_outputs)


def seed_layer_order(model: ColoredMnistCnn) -> ColoredMnistCnn:
    """The same model (same weights) with the seed's conv -> ReLU -> pool order, for comparisons."""
    conv1, pool1, relu1, conv2, pool2, relu2 = model.features
    model.features = nn.Sequential(conv1, relu1, pool1, conv2, relu2, pool2)
    return model
