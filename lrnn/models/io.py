"""Checkpoint I/O: safetensors weights + config.json, written atomically (write, then rename)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lrnn.atomic import atomic_write, atomic_write_text
from lrnn.models.generation import SpecialTokens

__all__ = ["WEIGHTS_NAME", "CONFIG_NAME", "GENERATION_CONFIG_NAME", "atomic_write", "atomic_write_text",
           "save_weights", "load_weights", "save_special_tokens", "load_special_tokens", "read_json", "cast_tensors_"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# HF's file for generation defaults; lrnn keeps a model's special token ids there (ModelConfig has no field
# for them, and formats whose config.json cannot hold them -- lrnn, mamba_ssm -- get them back from it).
GENERATION_CONFIG_NAME = "generation_config.json"


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


def save_special_tokens(directory: Path, tokens: SpecialTokens) -> None:
    """Write ``tokens`` to ``directory/generation_config.json`` (atomically); with no ids recorded, remove a
    file left by an earlier save instead, so that a directory never describes another model's tokens."""
    path = directory / GENERATION_CONFIG_NAME
    if tokens.is_empty():
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, json.dumps(tokens.to_dict(), indent=2, sort_keys=True) + "\n")


def load_special_tokens(directory: Path) -> SpecialTokens:
    """The token ids of ``directory/generation_config.json`` (none recorded when the file is absent); other
    keys of the file (HF's sampling defaults) are not read. Bad JSON or ids raise a ValueError naming it."""
    path = directory / GENERATION_CONFIG_NAME
    if not path.is_file():
        return SpecialTokens()
    return SpecialTokens.from_dict(read_json(path), str(path))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing file or bad JSON raises an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def cast_tensors_(module: torch.nn.Module, dtypes: dict[str, torch.dtype]) -> torch.nn.Module:
    """Give ``module``'s parameters and buffers named in ``dtypes`` (state_dict names) those dtypes, in place.

    Casting before ``load_state_dict`` is what keeps a checkpoint's dtypes: loading copies values into the
    existing tensors, converting them to the tensors' dtype. A tied parameter is one tensor: casting it under
    either name casts both uses. Returns ``module``.
    """
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    for name, dtype in dtypes.items():
        if name in tensors and tensors[name].dtype != dtype:
            tensors[name].data = tensors[name].data.to(dtype)
    return module
