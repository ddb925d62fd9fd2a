"""The allocator's free memory kept within a stage and handed back between stages
(blochnet.memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blochnet.memory import _LIBC, keep_freed_memory, release_free_memory

STATUS = Path("/proc/self/status")


def _resident_bytes() -> int:
    line = next(x for x in STATUS.read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(_LIBC is None or not STATUS.exists(), reason="needs glibc and /proc")
def test_freed_tensors_leave_the_resident_set_only_when_released():
    """With the CLI's allocator setting (freed blocks kept for reuse), 320 MB of freed
    tensors stay resident; release_free_memory returns them to the system."""
    assert keep_freed_memory()
    release_free_memory()
    blocks = [torch.ones(1_000_000, dtype=torch.float64) for _ in range(40)]  # 8 MB each
    del blocks
    kept = _resident_bytes()
    release_free_memory()
    assert _resident_bytes() < kept - 250e6
