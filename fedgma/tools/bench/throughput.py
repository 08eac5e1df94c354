"""Training throughput against the machine's own ceiling, per core, in fp32 and bf16.

The ceiling is a square matrix multiplication (2n^3 FLOP) on one thread; the
training figure is one client's local training (the seed's: 600 images, 3
full-batch Adam steps) on one thread, its FLOP counted by torch's
``FlopCounterMode`` (convolutions and matrix products, forward and backward).
Measured one after the other in one process, best of a few repeats, so the gap
between what the CNN reaches and what the cores can do is visible on any
machine (a CPU without bf16 units shows a bf16 ceiling at or below fp32's).

The same training is also timed "as the seed": the seed's ReLU-before-pool
order (:func:`fedgma.model.seed_layer_order`) and glibc's default allocator
(:mod:`fedgma.allocator`), so the two changes this app makes are measured side
by side with it, in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedgma.data import ColoredData
from fedgma.allocator import keep_freed_memory
from fedgma.model import build_model, seed_layer_order
from fedgma.training import prepare_model, train_local

PRECISIONS = ("fp32", "bf16")


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``work`` (after one warm-up call)."""
    work()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def synthetic_partition(images: int) -> ColoredData:
    """A partition of ``images`` random coloured images, the size of one seed client's."""
    rng = np.random.default_rng(0)
    return ColoredData(rng.integers(0, 256, (images, 3, 28, 28), dtype=np.uint8), rng.integers(0, 2, images))


def local_training(data: ColoredData, precision: str, epochs: int = 3, as_seed: bool = False) -> Callable[[], object]:
    """One seed client's local training (full-batch Adam) on a fresh model, as a callable to time.

    ``as_seed``: the seed's layer order and glibc's default allocator while it runs.
    """
    model = prepare_model(build_model("binary", seed=0))
    if as_seed:
        seed_layer_order(model)

    def train() -> object:
        keep_freed_memory(not as_seed)
        try:
            return train_local(model, data, epochs, 0, "adam", 1e-3, precision=precision)
        finally:
            keep_freed_memory()

    return train


def time_by_operator(work: Callable[[], object], top: int = 6) -> dict[str, float]:
    """Share of ``work``'s CPU time per torch operator (self time), the ``top`` largest and the rest.

    Operators of one name are summed across layers (both convolutions' backward
    passes are one ``aten::convolution_backward``).
    """
    work()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        work()
    times = sorted(((event.key, event.self_cpu_time_total) for event in profiler.key_averages()),
                   key=lambda item: -item[1])
    total = sum(t for _, t in times)
    shares = {name: t / total for name, t in times[:top]}
    return shares | {"other": 1.0 - sum(shares.values())}


def measure(images: int = 600, n: int = 2048, repeats: int = 3) -> dict[str, Any]:
    """Per-core ceilings and training throughput in fp32 and bf16 (one torch thread), and
    where the training's time goes per operator.

    The training's FLOP are counted once: both precisions run the same operations.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = synthetic_partition(images)
        with FlopCounterMode(display=False) as counter:
            local_training(data, "fp32")()
        flop = counter.get_total_flops()
        result = {"train_gflop": flop / 1e9}
        for precision, dtype in zip(PRECISIONS, (torch.float32, torch.bfloat16)):
            result[f"matmul_{precision}_gflops"] = matmul_gflops(dtype, n, repeats)
            for name, as_seed in ((f"train_{precision}", False), (f"train_as_seed_{precision}", True)):
                result[f"{name}_gflops"] = flop / best_seconds(local_training(data, precision, as_seed=as_seed),
                                                               repeats) / 1e9
            result[f"app_speedup_{precision}"] = (result[f"train_{precision}_gflops"]
                                                 / result[f"train_as_seed_{precision}_gflops"])
            result[f"train_{precision}_of_ceiling"] = (result[f"train_{precision}_gflops"]
                                                       / result[f"matmul_{precision}_gflops"])
            result[f"time_by_operator_{precision}"] = time_by_operator(local_training(data, precision))
        result["bf16_speedup"] = result["train_bf16_gflops"] / result["train_fp32_gflops"]
        return result
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # python -m fedgma.tools.bench.throughput: this part of the benchmark alone (about a minute)
    import json

    from .report import print_throughput

    measured = measure()
    print(json.dumps(measured, indent=1))
    print_throughput({"throughput": measured})
