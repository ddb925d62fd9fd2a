"""Where and how the computation runs: device, CPU threads, memory allocator.

:func:`prepare_compute` is what every command calls before it builds tensors.
"""

from __future__ import annotations

from blochnet.errors import ConfigurationError
from blochnet.memory import keep_freed_memory


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
