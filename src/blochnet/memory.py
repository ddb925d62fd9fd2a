"""The C allocator's handling of freed memory (glibc; elsewhere both calls do nothing).

A refinement allocates and frees the same large tensors every epoch, so freed blocks are
kept for reuse inside a stage (:func:`keep_freed_memory`, set by every command), and handed
back to the system where the allocation pattern changes (:func:`release_free_memory`: at
each stage of a run, before a Jacobian that follows a backward pass).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def _glibc():
    """The process's own C library where it is glibc (it has ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks instead of returning them to the system.

    A refinement allocates and frees the same large tensors (batched structure matrices,
    eigenvectors) every epoch. By default glibc serves blocks above 128 kB with fresh
    ``mmap`` pages and unmaps them on free, so every epoch pays the kernel for zeroing the
    same gigabytes again: on a 2-core machine the quartz refinement spent 40 % of its time
    in the kernel, and one objective evaluation with its gradient went from 6.0 s to 3.0 s
    with this setting. Raising the mmap and trim thresholds keeps the blocks for reuse; the
    process then holds on to its peak memory until :func:`release_free_memory`. Does
    nothing (returns False) where the C library is not glibc.
    """
    global _tuned
    if _tuned:
        return True
    if _LIBC is None:
        return False
    mallopt = _LIBC.mallopt
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 31) == 1
    _tuned = ok
    return ok


def release_free_memory() -> None:
    """Return the C allocator's free memory to the system (glibc ``malloc_trim``): the
    tensors a stage freed stay in the process's heap otherwise, and its resident set (what
    the system must provide) keeps the largest stage's size for the rest of the run."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
