"""Process-wide memory behaviour."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("faceverify")

# glibc's mallopt parameter number for M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3
# Allocations of 1 MiB or more (decoded images, Pillow's 16 MiB blocks, numpy arrays)
# get their own mappings, which go back to the system when freed. glibc otherwise raises
# its threshold to the largest block freed (up to 32 MiB), after which image-sized blocks
# come from per-thread heaps that it rarely returns: measured with 6 parallel requests of
# a 40 MP 16-bit PNG, 848 MB peak and 730 MB still held afterwards, against 489 MB peak and
# 282 MB held with this setting (idle: 180-200 MB).
MMAP_THRESHOLD = 1 << 20


def return_large_blocks_to_the_system() -> bool:
    """Set glibc's mmap threshold (fixed, so it no longer adapts). False where the C
    library is not glibc (musl, macOS): nothing is changed there."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
