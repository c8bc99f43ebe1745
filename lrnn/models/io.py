"""Checkpoint I/O: safetensors weights + config.json, written atomically (write, then rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    _atomic_write(path, write)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save tensors as safetensors, atomically (shared storage is cloned: safetensors forbids it)."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous().clone() for name, t in state.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


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
