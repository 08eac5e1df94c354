"""The machine this process runs on: its CPU (each run and benchmark records it), whether bf16 is native,
and the torch device a run uses (:func:`resolve_device`).

Machines that report the same model name differ several-fold in this CNN's round time (a 2.0 GHz
AVX2-only EPYC against one with AVX-512), so the clock and the widest vector unit are kept with
every wall time. Whether the CPU has bfloat16 instructions decides whether ``precision="bf16"``
saves time or costs it: without them torch emulates bfloat16 and autocast is slower than fp32.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .settings import ConfigError

#: /proc/cpuinfo flags of x86 CPUs with bfloat16 arithmetic (AVX512-BF16, AMX), which oneDNN uses.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def machine() -> dict[str, Any]:
    """The CPU, cores, clock, widest vector unit, bf16 instructions and memory of this machine."""
    info = _proc_fields(Path("/proc/cpuinfo"))
    flags = set(info.get("flags", "").split())
    memory = _proc_fields(Path("/proc/meminfo")).get("MemTotal", "0 kB").split()[0]
    return {"cpu": info.get("model name", platform.processor()), "cores": os.cpu_count(),
            "cpu-mhz": float(info.get("cpu MHz", "nan")),
            "vector-unit": next((f for f in ("avx512f", "avx2", "avx", "neon", "asimd") if f in flags), "unknown"),
            "bf16-units": native_bf16(flags),
            "memory_bytes": int(memory) * 1024, "platform": platform.platform()}


def native_bf16(flags: set[str]) -> bool | None:
    """Whether an x86 CPU with these /proc/cpuinfo ``flags`` has bfloat16 instructions; None
    where there are no x86 flags to tell (no /proc, or an ARM CPU)."""
    if not {"sse2", "avx2"} & flags:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


@lru_cache(maxsize=1)
def warn_if_bf16_is_emulated() -> bool:
    """Say once per process, on stderr, when bf16 autocast on this CPU is emulated (slower than
    fp32, not faster); True if it said so."""
    if native_bf16(set(_proc_fields(Path("/proc/cpuinfo")).get("flags", "").split())) is not False:
        return False
    print(f"warning: precision='bf16' on a CPU without bfloat16 instructions (none of {', '.join(BF16_FLAGS)} "
          "in /proc/cpuinfo): torch emulates bfloat16 here, so training is slower than with "
          "precision='fp32', not faster; the results are the same within seed noise either way "
          "(docs/performance.md)", file=sys.stderr, flush=True)
    return True


def _proc_fields(path: Path) -> dict[str, str]:
    """The first value of each ``key : value`` line of a /proc file ({} where there is none: macOS)."""
    fields: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    return fields


def resolve_device(name: str) -> torch.device:
    """The torch device of run-config key ``device``: ``auto`` is CUDA when torch sees a GPU, else the CPU.

    ``cuda`` without a GPU raises :class:`ConfigError` here, before round 1, rather
    than a CUDA error from inside a client later.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Run-config key 'device' is 'cuda' but torch {torch.__version__} sees no GPU "
                          f"(CUDA build: {torch.version.cuda or 'none'}); use device='auto' or 'cpu'.")
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"Run-config key 'device' must be 'auto', 'cpu' or 'cuda', not {name!r}")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")
