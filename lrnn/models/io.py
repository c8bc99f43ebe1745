"""Checkpoint I/O: safetensors weights + config.json, written atomically (write, then rename)."""

from __future__ import annotations

from pathlib import Path

import torch

from lrnn.atomic import atomic_write, atomic_write_text

__all__ = ["WEIGHTS_NAME", "CONFIG_NAME", "atomic_write", "atomic_write_text", "save_weights", "load_weights"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save tensors as safetensors, atomically (shared storage is cloned: safetensors forbids it)."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous().clone() for name, t in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file raises an error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights from {path}: {err}") from None
