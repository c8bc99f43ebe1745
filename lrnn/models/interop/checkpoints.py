"""Reading any supported checkpoint directory into an lrnn model, writing one in any format, converting.

``load`` detects the format from ``config.json`` (or takes it), translates the config with the format's
module (``hf``, ``fla``, ``mamba_ssm``) and loads the renamed tensors in their stored dtypes; ``save_model``
validates the model against the target format before it writes anything; ``convert`` chains the two,
writing into a temporary directory that replaces the destination only once complete.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrnn.models.interop import fla, hf, mamba_ssm
from lrnn.models.interop.common import load_peer_state, read_weights, skip_tied_head
from lrnn.models.io import CONFIG_NAME, WEIGHTS_NAME, cast_tensors_, read_json
from lrnn.models.lm import LanguageModel, check_float_dtype

FORMATS = ("lrnn", "mamba_ssm", "hf", "fla")
PEERS = {"mamba_ssm": mamba_ssm, "hf": hf, "fla": fla}
DELTANET_FAMILY = {"deltanet", "gated_deltanet", "deltaproduct"}  # written in fla's types, also for "hf"


@dataclass
class Loaded:
    """A model read from disk: the model (eval mode; tensors in their stored dtypes unless ``load`` was given
    a ``dtype``), its source format, the stored dtype of every parameter and the source ``config.json``."""

    model: LanguageModel
    format: str
    dtypes: dict[str, torch.dtype]
    config: dict[str, Any]


def check_format(name: str, value: str) -> str:
    """``value`` if it is one of ``FORMATS``, else a ValueError naming ``name`` (a flag or argument)."""
    if value not in FORMATS:
        raise ValueError(f"{name} must be one of {list(FORMATS)}, got {value!r}")
    return value


def _model_directory(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    _refuse_run_directory(directory)
    return directory


def _refuse_run_directory(directory: Path) -> None:
    """A run directory of ``lrnn train`` / ``lrnn pretrain`` given where a model directory is expected gets an
    error that says where its model is, not a list of unknown config keys."""
    if (directory / "model" / CONFIG_NAME).is_file() and not (directory / WEIGHTS_NAME).exists():
        raise ValueError(f"{directory} is a run directory (lrnn train / pretrain); its model is {directory / 'model'}")


def detect_format(directory: str | Path) -> str:
    """The format of a checkpoint directory, from its ``config.json``."""
    directory = _model_directory(directory)
    config = read_json(directory / CONFIG_NAME)
    if "mixer" in config and "n_layers" in config:
        return "lrnn"
    for name in ("hf", "fla", "mamba_ssm"):  # mamba_ssm's test is the loosest: last
        if PEERS[name].is_config(config):
            return name
    model_type = config.get("model_type")
    raise ValueError(f"{directory / CONFIG_NAME}: cannot tell the checkpoint format"
                     + (f" (model_type {model_type!r} is not one lrnn imports: "
                        f"{list(hf.MODEL_TYPES + fla.MODEL_TYPES)})" if model_type else "")
                     + f"; pass the format explicitly (one of {list(FORMATS)})")


def load(directory: str | Path, format: str | None = None, dtype: torch.dtype | None = None) -> Loaded:
    """Read a checkpoint directory of any supported format into an lrnn ``LanguageModel``.

    Tensors keep their stored dtypes unless ``dtype`` (a floating-point ``torch.dtype``) asks for another,
    as in ``LanguageModel.from_pretrained``. The special token ids the format records are kept in
    ``model.special_tokens``.
    """
    check_float_dtype("dtype", dtype)
    directory = _model_directory(directory)
    fmt = detect_format(directory) if format is None else check_format("format", format)
    config = read_json(directory / CONFIG_NAME)
    if fmt == "lrnn":
        model = LanguageModel.from_pretrained(directory)  # in the stored dtypes
        dtypes = {name: t.dtype for name, t in model.checkpoint_state().items()}
    else:
        model, dtypes = _load_peer(directory, fmt, config)
    return Loaded(model.to(dtype).eval(), fmt, dtypes, config)


def _load_peer(directory: Path, fmt: str, config: dict[str, Any]) -> tuple[LanguageModel, dict[str, torch.dtype]]:
    module = fla if fmt == "hf" and fla.is_config(config) else PEERS[fmt]  # fla's models are HF-registered types
    if not module.is_config(config):
        raise ValueError(f"{directory / CONFIG_NAME} is not a {fmt} config (model_type {config.get('model_type')!r})")
    model_config = module.to_lrnn_config(config, str(directory / CONFIG_NAME))
    model = LanguageModel(model_config)
    model.special_tokens = module.special_tokens(config, directory)
    state, path = read_weights(directory)
    if module is fla:
        state = fla.prepare_state(state, path)
    return model, load_peer_state(model, state, module.KEYMAP, path, skip_tied_head(model_config))


def load_model(directory: str | Path, format: str | None = None, dtype: torch.dtype | None = None) -> LanguageModel:
    """``load(directory, format, dtype).model``."""
    return load(directory, format, dtype).model


def save_model(model: LanguageModel, directory: str | Path, format: str,
               dtypes: dict[str, torch.dtype] | None = None) -> str:
    """Write ``model`` in ``format`` into ``directory`` (same-named files replaced, each atomically; tensors
    cast to ``dtypes``, by lrnn name, where given); returns the format written (``hf`` for a DeltaNet model
    is fla's). ``write_model`` is the variant that refuses to overwrite and never leaves a partial directory.

    Options the target cannot express (negative eigenvalues in mamba formats, hybrids, ...) are refused
    by name before anything is written.
    """
    module = check_exportable(model, format)
    directory = Path(directory)
    if module is None:
        if dtypes:
            model = cast_copy(model, dtypes)
        model.save_pretrained(directory)
        return "lrnn"
    module.save(model, directory, dtypes)
    return format if module is not fla or format == "fla" else "hf (fla)"


def check_exportable(model: LanguageModel, format: str):
    """The module that writes ``model`` in ``format`` (None for lrnn's own); a ValueError naming the option
    if the format cannot express the model."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")
    check_format("format", format)
    if format == "lrnn":
        return None
    module = fla if format == "hf" and set(model.config.layer_mixers()) <= DELTANET_FAMILY else PEERS[format]
    module.from_lrnn_config(model)
    return module


def check_destination(destination: str | Path, source: str | Path | None = None, overwrite: bool = False) -> Path:
    """``destination`` as a Path if a checkpoint may be written there: not an existing file, not the
    ``source`` directory, and empty or absent unless ``overwrite``."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise FileExistsError(f"destination {destination} is a file; a checkpoint is a directory")
    if source is not None and destination.exists() and Path(source).exists() and \
            destination.resolve() == Path(source).resolve():
        raise ValueError(f"destination {destination} is the source directory; write the conversion elsewhere")
    if not overwrite and destination.is_dir() and any(destination.iterdir()):
        entries = sorted(p.name for p in destination.iterdir())
        raise FileExistsError(f"destination {destination} is not empty ({len(entries)} "
                              f"{'entry' if len(entries) == 1 else 'entries'}: "
                              f"{', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}); "
                              "replace it with overwrite=True (lrnn convert --force)")
    return destination


def write_model(model: LanguageModel, destination: str | Path, format: str, overwrite: bool = False) -> str:
    """``save_model`` into a fresh directory that replaces ``destination`` only once complete.

    The files are written into a temporary sibling directory, which is then renamed to ``destination``: a
    failed write leaves ``destination`` as it was. An existing non-empty ``destination`` is refused unless
    ``overwrite``; then it is replaced as a whole (files in it that the new checkpoint lacks, such as a
    sharded index of another format, would otherwise mislead a reader). Returns the format written.
    """
    check_exportable(model, format)
    destination = check_destination(destination, overwrite=overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    try:
        written = save_model(model, staging, format)
        _replace_directory(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return written


def _replace_directory(new: Path, destination: Path) -> None:
    """Rename ``new`` onto ``destination``; an existing non-empty ``destination`` is moved aside first and
    removed after the rename (restored if the rename fails)."""
    if not (destination.is_dir() and any(destination.iterdir())):
        os.replace(new, destination)  # rename(2) replaces an empty directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
    try:
        os.replace(destination, old / destination.name)
        try:
            os.replace(new, destination)
        except BaseException:
            os.replace(old / destination.name, destination)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def cast_copy(model: LanguageModel, dtypes: dict[str, torch.dtype]) -> LanguageModel:
    """A copy of ``model`` whose tensors named in ``dtypes`` have those dtypes (``model`` is unchanged)."""
    return cast_tensors_(copy.deepcopy(model), dtypes)


def prepare_conversion(source: str | Path, destination: str | Path, to: str, source_format: str | None = None,
                       overwrite: bool = False) -> Loaded:
    """Everything ``convert`` checks before writing: the formats, the destination (``check_destination``),
    the source checkpoint (loaded) and that ``to`` can express it. Returns the loaded source."""
    check_format("--to", to)
    if source_format is not None:
        check_format("--from", source_format)
    check_destination(destination, source, overwrite)
    loaded = load(source, source_format)
    check_exportable(loaded.model, to)
    return loaded


def convert(source: str | Path, destination: str | Path, to: str, source_format: str | None = None,
            overwrite: bool = False) -> tuple[str, str]:
    """Convert a checkpoint directory to format ``to``; returns ``(source format, written format)``.

    Every tensor keeps its stored dtype (a bfloat16 checkpoint stays bfloat16). A non-empty ``destination``
    is refused unless ``overwrite``; a failed conversion leaves ``destination`` untouched (``write_model``).
    """
    loaded = prepare_conversion(source, destination, to, source_format, overwrite)
    return loaded.format, write_model(loaded.model, destination, to, overwrite)
