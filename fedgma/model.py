"""The models: the seed repository's CNN for 3 x 28 x 28 colored MNIST, and IRM's MLP for its 2 x 14 x 14 one.

conv 5x5 (32) -> ReLU -> max-pool 2 -> conv 5x5 (64) -> ReLU -> max-pool 2 ->
dense 512 (ReLU) -> ``num_outputs`` logits. With one logit (the binary task) it
has 579,009 parameters, as in the seed repository; ten logits serve the
multiclass task.

Each convolution block pools before its ReLU. The two commute exactly (ReLU is
monotone, so the maximum of ReLUs is the ReLU of the maximum, and the gradient
reaches the same input element or is zero either way), so outputs and gradients
are bit-for-bit those of the seed's order (:func:`seed_layer_order`,
``tests/test_model.py``), while the ReLU and its backward pass touch a quarter
of the elements (the time saved is measured by ``python -m fedgma.tools.bench``).
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


class IrmMlp(nn.Module):
    """IRM's colored-MNIST model (Arjovsky et al. 2019, their code's ``MLP``): 2 x 14 x 14 inputs ->
    390 (ReLU) -> 390 (ReLU) -> 1 logit, Xavier-uniform weights and zero biases (306,001 parameters)."""

    HIDDEN = 390

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(2 * 14 * 14, self.HIDDEN), nn.ReLU(),
                                    nn.Linear(self.HIDDEN, self.HIDDEN), nn.ReLU(), nn.Linear(self.HIDDEN, 1))
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def _new_model(task: str) -> nn.Module:
    if task == "irm":
        return IrmMlp()
    return ColoredMnistCnn(10 if task == "multiclass" else 1)


def build_model(task: str = "binary", seed: int | None = None) -> nn.Module:
    """A freshly initialised model for ``task`` ('binary', 'multiclass' or 'irm'); with ``seed`` the initial
    weights are reproducible."""
    if seed is None:
        return _new_model(task)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _new_model(task)


def seed_layer_order(model: ColoredMnistCnn) -> ColoredMnistCnn:
    """The same model (same weights) with the seed's conv -> ReLU -> pool order, for comparisons."""
    conv1, pool1, relu1, conv2, pool2, relu2 = model.features
    model.features = nn.Sequential(conv1, relu1, pool1, conv2, relu2, pool2)
    return model
