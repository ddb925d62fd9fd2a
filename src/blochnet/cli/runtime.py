"""Where and how the computation runs: device, CPU threads, memory allocator.

:func:`prepare_compute` is what every command calls before it builds tensors.
"""

from __future__ import annotations

import ctypes
import sys

from blochnet.errors import ConfigurationError

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks instead of returning them to the system.

    A refinement allocates and frees the same large tensors (batched structure matrices,
    eigenvectors) every epoch. By default glibc serves blocks above 128 kB with fresh
    ``mmap`` pages and unmaps them on free, so every epoch pays the kernel for zeroing the
    same gigabytes again: on a 2-core machine the quartz refinement spent 40 % of its time
    in the kernel, and one objective evaluation with its gradient went from 6.0 s to 3.0 s
    with this setting. Raising the mmap and trim thresholds keeps the blocks for reuse; the
    process then holds on to its peak memory. Does nothing (returns False) where the C
    library is not glibc.
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 31) == 1
    _tuned = ok
    return ok


def prepare_compute(device: str = "cpu", threads: int = 0) -> str:
    """Check ``device`` ("cpu" or "cuda"), set the CPU thread count (0 keeps PyTorch's
    default, all cores) and tune the allocator; returns the device name."""
    import torch

    if device not in ("cpu", "cuda"):
        raise ConfigurationError(f"--device {device}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda: CUDA is not available on this machine")
    if threads < 0:
        raise ConfigurationError(f"--threads {threads}: expected 0 (all cores) or more")
    if threads > 0:
        torch.set_num_threads(threads)
    keep_freed_memory()
    return device
