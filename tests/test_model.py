"""The CNN: pooling before ReLU is the seed's ReLU-then-pool, bit for bit."""

from __future__ import annotations

import platform

import pytest
import torch

from fedgma.allocator import keep_freed_memory
from fedgma.model import build_model, seed_layer_order
from fedgma.training import loss_and_correct, prepare_model, to_input


@pytest.mark.parametrize(("task", "outputs"), [("binary", 1), ("multiclass", 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_then_relu_gives_the_seed_order_outputs_and_gradients_exactly(task, outputs, dtype):
    ours = prepare_model(build_model(task, seed=3))
    theirs = prepare_model(seed_layer_order(build_model(task, seed=3)))
    generator = torch.Generator().manual_seed(0)
    images = to_input(torch.randint(0, 256, (64, 3, 28, 28), dtype=torch.uint8, generator=generator))
    labels = torch.randint(0, outputs if outputs > 1 else 2, (64,), generator=generator)
    grads = []
    for model in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(images)
        loss, _ = loss_and_correct(logits.float(), labels)
        loss.backward()
        grads.append((logits, [p.grad for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
    assert any(g.abs().sum() > 0 for g in grads[0][1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_allocator_settings_apply_on_glibc():
    assert keep_freed_memory(False) and keep_freed_memory()
