"""Keep freed memory in the process, so training does not page-fault its activations back in.

glibc's ``malloc`` serves every block over 32 MB (at most) with a fresh ``mmap``
and returns it to the kernel on ``free``. One full-batch step of the seed's CNN
allocates several such blocks (the first convolution's 600 x 32 x 24 x 24 output
and its gradient are 44 MB each in fp32), so every step faults tens of megabytes
of fresh zeroed pages in again. :func:`keep_freed_memory` tells glibc to serve
large blocks from its heap and not to give freed memory back, so the next step
reuses the same pages; the process keeps its peak footprint (a few hundred MB per
client worker) instead. Numbers do not change, only where the bytes live; the
time it saves is measured by ``python -m fedgma.tools.bench`` (:mod:`fedgma.tools.bench.throughput`).
A no-op where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # from glibc's malloc.h
_KEEP = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}  # no mmap'd blocks; keep up to 2 GiB free
_GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}


def keep_freed_memory(keep: bool = True) -> bool:
    """Large blocks from the heap and freed memory kept (``keep=False``: glibc's defaults).

    Process-wide. Returns True where applied (glibc), False elsewhere.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return all(libc.mallopt(option, value) == 1 for option, value in (_KEEP if keep else _GLIBC_DEFAULTS).items())
