"""Keep freed memory in the process, so training does not page-fault its activations back in.

glibc's ``malloc`` serves every block over 32 MB (at most) with a fresh ``mmap``
and returns it to the kernel on ``free``. One full-batch step of the seed's CNN
allocates several such blocks (the first convolution's 600 x 32 x 24 x 24 output
and its gradient are 44 MB each in fp32), so every step faults tens of megabytes
of fresh zeroed pages in again: measured here, a third of an fp32 client's local
training went to that. :func:`keep_freed_memory` tells glibc to serve large blocks
from its heap and not to give freed memory back, so the next step reuses the same
pages; the process keeps its peak footprint (a few hundred MB per client worker)
instead. Numbers do not change, only where the bytes live. A no-op where the C
library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import cache

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_MAX = -4
_KEEP_UP_TO = 2**31 - 1  # bytes of free memory at the top of the heap kept before trimming (the int maximum)


@cache
def keep_freed_memory() -> bool:
    """Once per process: large blocks from the heap, freed memory kept. True if applied."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))
