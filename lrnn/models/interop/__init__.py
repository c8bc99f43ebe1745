"""Interop with peer checkpoints: import, export and convert between lrnn and peer formats.

Formats (``FORMATS``):
    lrnn       lrnn's own ``config.json`` + ``model.safetensors`` (``LanguageModel.save_pretrained``).
    mamba_ssm  state-spaces/mamba ``MambaLMHeadModel`` (Mamba, Mamba-2): ``pytorch_model.bin`` or safetensors.
    hf         HF transformers: ``mamba`` / ``mamba2`` model types; DeltaNet-family models export to fla's
               HF-registered types (the same as ``fla``).
    fla        flash-linear-attention ``delta_net`` / ``gated_deltanet`` / ``gated_deltaproduct``.

``load(directory)`` detects the format from ``config.json``; every importer refuses, by name, an option
whose math lrnn cannot reproduce, and reports missing, unknown or mis-shaped tensors with the file and
key. Torch pickles are read with ``weights_only=True`` only. Files are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrnn.models.interop import fla, hf, mamba_ssm
from lrnn.models.interop.common import CONFIG_NAME, load_peer_state, read_json, read_weights
from lrnn.models.lm import LanguageModel

FORMATS = ("lrnn", "mamba_ssm", "hf", "fla")
_PEERS = {"mamba_ssm": mamba_ssm, "hf": hf, "fla": fla}

__all__ = ["FORMATS", "Loaded", "detect_format", "load", "load_model", "save_model", "convert"]


@dataclass
class Loaded:
    """A model read from disk: the model (eval mode, float32), its source format, the source dtype of every
    parameter (``convert`` writes them back in it) and the source ``config.json`` as a dict."""

    model: LanguageModel
    format: str
    dtypes: dict[str, torch.dtype]
    config: dict[str, Any]


def _check_format(name: str, value: str, allowed=FORMATS) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def detect_format(directory: str | Path) -> str:
    """The format of a checkpoint directory, from its ``config.json``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    config = read_json(directory / CONFIG_NAME)
    if "mixer" in config and "n_layers" in config:
        return "lrnn"
    if hf.is_config(config):
        return "hf"
    if fla.is_config(config):
        return "fla"
    if mamba_ssm.is_config(config):
        return "mamba_ssm"
    model_type = config.get("model_type")
    raise ValueError(f"{directory / CONFIG_NAME}: cannot tell the checkpoint format"
                     + (f" (model_type {model_type!r} is not one lrnn imports: "
                        f"{list(hf.MODEL_TYPES + fla.MODEL_TYPES)})" if model_type else "") + f"; pass the format explicitly (one of {list(FORMATS)})")


def load(directory: str | Path, format: str | None = None) -> Loaded:
    """Read a checkpoint directory of any supported format into an lrnn ``LanguageModel``."""
    directory = Path(directory)
    fmt = detect_format(directory) if format is None else _check_format("format", format)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    config = read_json(directory / CONFIG_NAME)
    if fmt == "lrnn":
        from lrnn.models.io import WEIGHTS_NAME, load_weights

        model = LanguageModel.from_pretrained(directory)  # float32; remember the stored dtypes
        dtypes = {k: v.dtype for k, v in load_weights(directory / WEIGHTS_NAME).items()}
        return Loaded(model.eval(), fmt, dtypes, config)
    module = _PEERS[fmt]
    if fmt == "hf" and fla.is_config(config):
        module = fla  # fla's models are HF-registered types
    if not module.is_config(config):
        raise ValueError(f"{directory / CONFIG_NAME} is not a {fmt} config (model_type {config.get('model_type')!r})")
    model_config = module.to_lrnn_config(config, str(directory / CONFIG_NAME))
    model = LanguageModel(model_config)
    state, path = read_weights(directory)
    if module is fla:
        state = fla.prepare_state(state, path)
    dtypes = load_peer_state(model, state, module.KEYMAP, path, module.ignore_key(model_config))
    return Loaded(model.eval(), fmt, dtypes, config)


def load_model(directory: str | Path, format: str | None = None) -> LanguageModel:
    """``load(directory, format).model``."""
    return load(directory, format).model


def save_model(model: LanguageModel, directory: str | Path, format: str,
               dtypes: dict[str, torch.dtype] | None = None) -> str:
    """Write ``model`` in ``format``; returns the format written (``hf`` for a DeltaNet model is fla's).

    Options the target cannot express (negative eigenvalues in mamba formats, hybrids, ...) are refused
    by name before anything is written.
    """
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")
    _check_format("format", format)
    directory = Path(directory)
    if format == "lrnn":
        if dtypes:
            model = _cast_copy(model, dtypes)
        model.save_pretrained(directory)
        return "lrnn"
    module = _PEERS[format]
    if format == "hf" and set(model.config.layer_mixers()) <= {"deltanet", "gated_deltanet", "deltaproduct"}:
        module = fla
    module.from_lrnn_config(model)  # validate first: nothing is written for a refused model
    module.save(model, directory, dtypes)
    return format if module is not fla or format == "fla" else "hf (fla)"


def _cast_copy(model: LanguageModel, dtypes: dict[str, torch.dtype]) -> LanguageModel:
    """A copy of ``model`` whose parameters have the given dtypes (for writing lrnn checkpoints)."""
    import copy

    clone = copy.deepcopy(model)
    for name, param in clone.named_parameters():
        if name in dtypes:
            param.data = param.data.to(dtypes[name])
    return clone


def convert(source: str | Path, destination: str | Path, to: str, source_format: str | None = None) -> tuple[str, str]:
    """Convert a checkpoint directory to format ``to``; returns ``(source format, written format)``."""
    _check_format("--to", to)
    if source_format is not None:
        _check_format("--from", source_format)
    source, destination = Path(source), Path(destination)
    if destination.exists() and source.exists() and destination.resolve() == source.resolve():
        raise ValueError(f"destination {destination} is the source directory; write the conversion elsewhere")
    loaded = load(source, source_format)
    written = save_model(loaded.model, destination, to, loaded.dtypes)
    return loaded.format, written
