"""The bundles' ``device`` id: ``"auto" | "cpu" | "cuda[:N]"`` -> a usable ``torch.device`` (used by every job
and by training)."""

from __future__ import annotations

import torch

from qdm_med.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a ``torch.device``) into a usable device.

    ``auto`` picks ``cuda`` when available, else ``cpu``. Asking for CUDA on a machine without it (or a
    GPU index that does not exist) raises :class:`~qdm_med.errors.ConfigError` with one line.
    """
    if device is None:
        device = "auto"
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"device {device!r}: unsupported device type; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
            "use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"device {device!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return dev
