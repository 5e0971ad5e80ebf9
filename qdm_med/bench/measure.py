"""Wall time and peak memory of a block of work, on the CPU or a CUDA device.

CPU peak memory is the process's resident-set high-water mark (``VmHWM``), reset before the block by
writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), minus the resident set at the start: the extra
memory the block needed at its peak, whoever allocated it (torch, numpy). So that freed memory really
leaves the resident set (and a second call does not silently reuse the first one's cached heap), glibc's
mmap threshold is pinned at 64 KiB (tensors above it are mapped and unmapped) and the heap is trimmed
before each block. Where the reset is not available the peak is None rather than a number that means
something else.
CUDA peak memory is ``torch.cuda.max_memory_allocated`` over the block minus the allocation at its start.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = ["PeakMemory", "time_call", "machine_info"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


_GLIBC = None


def _glibc():
    """glibc through ctypes with the mmap threshold pinned (once), or None on other C libraries."""
    global _GLIBC
    if _GLIBC is None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so large frees go back to the OS
            _GLIBC = libc
        except (OSError, AttributeError):
            _GLIBC = False
    return _GLIBC or None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: ``peak_bytes`` is the memory the block added at its peak (None if unmeasurable).

    Example::

        with PeakMemory(device) as mem:
            model(x)
        mem.peak_bytes
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self._base = 0
        self._ok = False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base, self._ok = torch.cuda.memory_allocated(self.device), True
        else:
            libc = _glibc()
            if libc is not None:
                libc.malloc_trim(0)
            rss = _status_kib("VmRSS")
            self._ok = rss is not None and _reset_hwm()
            self._base = (rss or 0) * 1024
        return self

    def __exit__(self, *exc) -> None:
        if not self._ok:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _status_kib("VmHWM")
            if hwm is None:
                return
            peak = hwm * 1024
        self.peak_bytes = max(0, int(peak - self._base))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: Sequence[Callable[[], object]], device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1) -> list[dict]:
    """Time several calls interleaved: each round runs every ``fn`` once, the starting one rotating, so a
    machine that speeds up or slows down during the measurement (shared CPUs, turbo) shifts all of them
    alike and their ratio stays fair. ``warmup`` untimed rounds first. Per fn: median and min seconds and
    the peak memory of its first timed call."""
    device = torch.device(device)
    fns = list(fns)
    for _ in range(max(0, int(warmup))):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    peaks: list[int | None] = [None] * len(fns)
    for r in range(max(1, int(repeats))):
        for k in range(len(fns)):
            i = (r + k) % len(fns)
            with PeakMemory(device) as mem:
                _sync(device)
                t0 = time.perf_counter()
                fns[i]()
                _sync(device)
                times[i].append(time.perf_counter() - t0)
            if len(times[i]) == 1:
                peaks[i] = mem.peak_bytes
    return [{"seconds": statistics.median(t), "seconds_min": min(t), "repeats": len(t), "peak_bytes": p} for t, p in zip(times, peaks)]


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times: median and min seconds and the peak
    memory of one timed call (the first)."""
    return time_calls([fn], device, repeats, warmup)[0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Where the numbers came from: CPU, cores, threads, memory, load, versions, device."""
    device = torch.device(device)
    mem_kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None if mem_kib is None else round(mem_kib / 2**20, 1),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
