"""glibc heap settings for inference: keep freed pages for reuse inside a piece, release them after.

A forward pass of a batch allocates and frees intermediates of 1-12 MB hundreds of times. glibc
serves such blocks with ``mmap`` (or trims them off the heap top) and the kernel zeroes fresh
pages on every first touch: on the project's CPU a third of FEQ3's inference time was page
faults in the kernel (22,600 minor faults per batch of 64 windows; SeisBench's EQTransformer and
PhaseNet lose as much). :func:`reuse_freed_memory` raises glibc's mmap and trim thresholds once
per process, so freed blocks are reused; :func:`release_freed_memory` (``malloc_trim``) still hands
the pages back after every annotated piece, which bounds the process RSS as before.

The settings are process-wide. They are left alone where the user set ``MALLOC_MMAP_THRESHOLD_``
or ``MALLOC_TRIM_THRESHOLD_``, or set ``SEISBENCH_FEQ_MALLOC=system``, and outside glibc.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "release_freed_memory", "reuse_freed_memory"]

logger = logging.getLogger(__name__)

#: Blocks up to this size come from the heap (the largest intermediate of a fused batch of 64
#: windows is 12 MB). glibc's ceiling for its own adaptive threshold is 32 MB.
MMAP_THRESHOLD = 16 * 2**20
#: Free memory at the heap top kept before glibc trims it by itself.
TRIM_THRESHOLD = 64 * 2**20

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl has no malloc_trim
        libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Set the glibc thresholds once per process; True if they were set here."""
    if os.environ.get("SEISBENCH_FEQ_MALLOC", "").lower() == "system":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    logger.debug("glibc mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    return done


def release_freed_memory() -> None:
    """Hand the free heap pages back to the OS (glibc keeps them otherwise, and the process RSS
    would grow to the largest piece plus the output however small the piece)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
