"""Wall time and peak memory of each stage of a run, for ``report.json`` and a summary line.

Peak memory is the process's peak resident set (Linux ``VmHWM``, reset at the start of
every stage through ``/proc/self/clear_refs``, so each stage reports its own peak) and, on
CUDA, the peak of PyTorch's allocator. Where neither can be read the value is None.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from blochnet.memory import release_free_memory

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Stage:
    name: str
    seconds: float
    peak_memory_gb: float | None
    gpu_peak_memory_gb: float | None = None


@dataclass
class Timings:
    """The stages of one run, in order (``stage`` times one; ``add`` records a time
    measured elsewhere, e.g. the epochs' forward and backward passes)."""

    stages: list[Stage] = field(default_factory=list)
    device: str = "cpu"
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _reset_peaks(self.device)
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.stages.append(
                Stage(name, time.perf_counter() - tick, _peak_rss_gb(), _gpu_peak_gb(self.device))
            )

    def add(self, name: str, seconds: float) -> None:
        self.stages.append(Stage(name, seconds, None))

    def seconds(self, name: str) -> float:
        return sum(s.seconds for s in self.stages if s.name == name)

    def peak_memory_gb(self) -> float | None:
        """The largest peak over the stages (None where it could not be read)."""
        values = [s.peak_memory_gb for s in self.stages if s.peak_memory_gb is not None]
        return max(values) if values else None

    def to_dict(self) -> dict:
        gpu = [s.gpu_peak_memory_gb for s in self.stages if s.gpu_peak_memory_gb is not None]
        return {
            "wall_time_s": time.perf_counter() - self.started,
            "peak_memory_gb": self.peak_memory_gb(),
            "gpu_peak_memory_gb": max(gpu) if gpu else None,
            "stages": [
                {
                    "name": s.name,
                    "seconds": round(s.seconds, 3),
                    "peak_memory_gb": s.peak_memory_gb,
                    **(
                        {"gpu_peak_memory_gb": s.gpu_peak_memory_gb} if s.gpu_peak_memory_gb else {}
                    ),
                }
                for s in self.stages
            ],
        }

    def summary(self) -> str:
        """One line: the time of each stage (repeated stages summed; parts named
        ``"stage: part"`` in parentheses after their stage), then the peak memory."""
        totals: dict[str, float] = {}
        parts: dict[str, list[str]] = {}
        for s in self.stages:
            stage, _, part = s.name.partition(": ")
            if part:
                parts.setdefault(stage, []).append(f"{part} {_seconds(s.seconds)}")
            else:
                totals[stage] = totals.get(stage, 0.0) + s.seconds
        shown = [
            f"{name} {_seconds(t)}" + (f" ({', '.join(parts[name])})" if name in parts else "")
            for name, t in totals.items()
        ]
        peak = self.peak_memory_gb()
        memory = f"; peak memory {peak:.2f} GB" if peak is not None else ""
        return f"time: {', '.join(shown)}{memory}"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _reset_peaks(device: str) -> None:
    release_free_memory()
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        pass
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_rss_gb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 3)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gpu_peak_gb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 1e9, 3)
