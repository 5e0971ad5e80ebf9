"""Run-time helpers of the inferencers: device choice, mixed precision, per-call info aggregation, timers and
the progress bar."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch

from qdm_med.bundle.device import resolve_device
from qdm_med.errors import ConfigError

__all__ = ["resolve_device", "amp_dtype", "autocast_context", "InfoAggregator", "Timer", "progress_bar"]


# ----------------------------------------------------------------------------------------------- device
def amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full float32). AMP is CUDA only."""
    if not amp or device.type != "cuda":
        return None
    if isinstance(amp, str):
        table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
        if amp.lower() not in table:
            raise ConfigError(f"amp {amp!r}: use bfloat16 or float16")
        return table[amp.lower()]
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device: torch.device, amp: bool | str = False):
    """``torch.autocast`` on CUDA when ``amp`` is set (True = bfloat16 if supported, else float16; or
    ``"bfloat16"`` / ``"float16"``); a no-op context on CPU (CPU autocast is slower than float32 here)."""
    dtype = amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


# ----------------------------------------------------------------------------------------------- info
class InfoAggregator:
    """Aggregate the pipeline's per-call ``last_info`` dicts over batches and tiles.

    Counts (``macs``, ``*_macs``, ``active_windows``, ``total_windows``, ``nfe``) and the per-stage seconds
    of ``timings`` (encode / sample / decode) are summed; fractions
    (keys containing ``density``) are averaged weighted by the LR pixels of the call; anything else
    (``steps``, ``sampler``, ``threshold``) keeps its last value.
    """

    SUM_KEYS = ("macs", "active_windows", "total_windows", "nfe", "tokens", "active_tokens")

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weighted: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.last: dict[str, Any] = {}
        self.calls = 0

    def _is_sum(self, key: str) -> bool:
        k = key.lower()
        return k in self.SUM_KEYS or k.endswith("macs") or k.startswith("macs")

    def add(self, info: dict | None, weight: float) -> None:
        if not info:
            return
        self.calls += 1
        for key, value in info.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if key == "timings" and isinstance(value, dict):  # per-stage seconds add up over calls
                sums = self.sums.setdefault(key, {})
                for stage, sec in value.items():
                    sums[stage] = sums.get(stage, 0.0) + float(sec)
                continue
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if numeric and self._is_sum(key):
                self.sums[key] = self.sums.get(key, 0) + (int(value) if float(value).is_integer() else float(value))
            elif numeric and "density" in key.lower():
                self.weighted[key] = self.weighted.get(key, 0.0) + float(value) * weight
                self.weights[key] = self.weights.get(key, 0.0) + weight
            else:
                self.last[key] = value

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.last)
        out.update({k: dict(v) if isinstance(v, dict) else v for k, v in self.sums.items()})
        for key, total in self.weighted.items():
            out[key] = total / self.weights[key] if self.weights[key] else None
        out["calls"] = self.calls
        return out


class Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str, device: torch.device):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - t0


def progress_bar(enabled: bool, console=None):
    """A rich progress bar on stderr, or None when disabled."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console if console is not None else Console(stderr=True),
        transient=False,
    )
