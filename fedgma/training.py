"""Local training and evaluation loops in plain PyTorch (no Flower import).

Images arrive as uint8 tensors and become floats in [0, 1] one batch at a time, so
a client's cached partition stays four times smaller than a float copy.

Everything runs where the model is: :func:`prepare_model` places it on the run's
device (:func:`fedgma.machine.resolve_device`), and the loops move each data set there once per
process (:func:`as_tensors`), so on a GPU a client's partition stays on the device
across rounds and only the weights cross each round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .allocator import keep_freed_memory
from .data import ColoredData
from .machine import warn_if_bf16_is_emulated


@dataclass
class LocalResult:
    """What one client's local training produced."""

    num_examples: int
    loss: float  # mean training loss over the last epoch
    accuracy: float  # training accuracy over the last epoch
    last_gradient: dict[str, np.ndarray]  # gradient of the last local step, per parameter


def loss_and_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss (BCE for one logit, cross-entropy otherwise) and number of correct predictions."""
    if logits.shape[1] == 1:
        logits = logits.squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        correct = ((logits > 0).long() == labels).sum()
    else:
        loss = F.cross_entropy(logits, labels)
        correct = (logits.argmax(1) == labels).sum()
    return loss, correct


def as_tensors(data: ColoredData, device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels as torch tensors on ``device``: zero-copy views on the CPU,
    a copy made once per process on any other device."""
    if device.type == "cpu":
        return torch.from_numpy(data.images), torch.from_numpy(data.labels)
    return _on_device(data, device)


@lru_cache(maxsize=None)
def _on_device(data: ColoredData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.images).to(device), torch.from_numpy(data.labels).to(device)


def to_input(images: torch.Tensor, pixel_divisor: float = 255.0) -> torch.Tensor:
    """uint8 (N, 3, 28, 28) -> float32 ``images / pixel_divisor`` ([0, 1] by default), channels-last.

    Channels-last is the faster layout for these convolutions on CPU (about 0.8x
    the time measured here, same fp32 math); see ``prepare_model``.
    """
    return images.float().div_(pixel_divisor).contiguous(memory_format=torch.channels_last)


def prepare_model(model: nn.Module, device: torch.device = torch.device("cpu")) -> nn.Module:
    """Put a model on ``device``, in the channels-last layout that ``to_input`` produces,
    and make this process keep freed memory for the next step (:mod:`fedgma.allocator`)."""
    keep_freed_memory()
    return model.to(device=device, memory_format=torch.channels_last)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(precision: str, device: torch.device):
    """``'bf16'``: bfloat16 autocast for forward passes (weights and optimizer stay
    fp32); ``'fp32'``: plain fp32. bf16 on a CPU without bfloat16 instructions is
    emulated and slower than fp32, which is said once per process."""
    if precision == "bf16" and device.type == "cpu":
        warn_if_bf16_is_emulated()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_local(model: nn.Module, data: ColoredData, epochs: int, batch_size: int, optimizer: str, lr: float,
                proximal_mu: float = 0.0, shuffle_seed: int = 0, precision: str = "fp32") -> LocalResult:
    """E local epochs of SGD/Adam from the model's current weights.

    ``batch_size=0`` trains full batch (one step per epoch, the seed repository).
    ``proximal_mu > 0`` adds FedProx's (mu / 2) ||w - w_t||^2 to the loss.
    """
    device = device_of(model)
    images, labels = as_tensors(data, device)
    n = len(labels)
    step = batch_size or n
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(shuffle_seed)
    model.train()
    for _ in range(epochs):
        # The order is drawn on the CPU, so a seed gives the same batches on every device.
        order = (torch.randperm(n, generator=generator) if step < n else torch.arange(n)).to(device)
        loss_sum, correct_sum = 0.0, 0
        for start in range(0, n, step):
            batch = order[start:start + step]
            with autocast(precision, device):
                logits = model(to_input(images[batch], data.pixel_divisor))
            loss, correct = loss_and_correct(logits.float(), labels[batch])
            loss_sum += float(loss.detach()) * len(batch)
            correct_sum += int(correct)
            if anchor is not None:
                loss = loss + proximal_mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
    last_gradient = {name: p.grad.detach().cpu().numpy().copy() for name, p in model.named_parameters()}
    return LocalResult(n, loss_sum / n, correct_sum / n, last_gradient)


@torch.inference_mode()
def evaluate(model: nn.Module, data: ColoredData, batch_size: int = 2000,
             precision: str = "fp32") -> tuple[float, float]:
    """(mean loss, accuracy) of the model on a coloured data set."""
    device = device_of(model)
    images, labels = as_tensors(data, device)
    model.eval()
    loss_sum, correct_sum = 0.0, 0
    for start in range(0, len(labels), batch_size):
        batch = slice(start, start + batch_size)
        with autocast(precision, device):
            logits = model(to_input(images[batch], data.pixel_divisor))
        loss, correct = loss_and_correct(logits.float(), labels[batch])
        loss_sum += float(loss) * len(labels[batch])
        correct_sum += int(correct)
    return loss_sum / len(labels), correct_sum / len(labels)


def shuffle_seed(seed: int, partition_id: int, server_round: int) -> int:
    """Mini-batch order of one client in one round, fixed by the run's seed."""
    return int(np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0])
