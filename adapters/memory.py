"""Large, short-lived buffers and the C allocator.

glibc's malloc serves a large block with its own mapping, returned to the system when freed, but each
time it frees one it raises that threshold to the block's size (up to 32 MiB). After the first upload,
the next file-sized buffers (the bytes being checked, their decoded text) come from the heap arenas
instead, one per thread, which keep what is freed: an API that had checked a few 25 MiB files stayed
50-100 MiB larger for good. Fixing the threshold turns that adjustment off, so every buffer of a
megabyte or more is mapped on its own and handed back as soon as it is freed.
"""

from __future__ import annotations

import ctypes
import functools

__all__ = ["LARGE_BUFFER_BYTES", "hand_back_large_buffers"]

LARGE_BUFFER_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


@functools.cache
def hand_back_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Have malloc map every block of ``threshold`` bytes or more on its own, for the life of the
    process (once is enough). False where the C library has no such setting (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
