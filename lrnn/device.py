"""``resolve_device``: a device name from the user, checked usable on this machine. At the package root
so that training, benchmarks and the command line share one check."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, checked usable here: a ValueError names an unknown device type, a backend
    this torch build or machine lacks (e.g. ``cuda`` on a CPU-only torch, ``mps`` off Apple silicon)
    and a device index past the count."""
    if not isinstance(name, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {name!r}")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be e.g. 'cpu' or 'cuda', got {name!r}: {err}") from None
    backend = getattr(torch, device.type, None)  # torch.cpu, torch.cuda, torch.mps, torch.xpu, ...
    if not callable(getattr(backend, "is_available", None)):
        raise ValueError(f"device {name!r}: torch has no {device.type!r} backend to run on; use e.g. 'cpu' or 'cuda'")
    if not backend.is_available():
        raise ValueError(f"device {name!r} requested but {device.type} is not available "
                         f"(torch {torch.__version__} on this machine)")
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r}: index {device.index} is out of range, this machine has {count} "
                         f"{device.type} device(s)")
    return device
