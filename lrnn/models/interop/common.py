"""Shared machinery of the peer formats: reading peer files safely, renaming keys, loading with checks.

A peer format is described by its config translation (in the format's module) and a ``KeyMap``: an
ordered list of ``(peer prefix, lrnn prefix)`` rules where ``{i}`` stands for a layer index, e.g.
``("backbone.layers.{i}.", "layers.{i}.")``. A key is renamed by its first matching rule; the rest of
the key (``mixer.in_proj.weight``) is kept, because lrnn's mixers use the peers' parameter names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lrnn.atomic import atomic_write, atomic_write_text
from lrnn.models.config import ModelConfig
from lrnn.models.generation import SpecialTokens
from lrnn.models.io import CONFIG_NAME, WEIGHTS_NAME, cast_tensors_, read_json, save_weights
from lrnn.models.lm import LanguageModel
from lrnn.validation import check_int, check_number

SAFETENSORS_NAME = WEIGHTS_NAME  # the same file name as lrnn's own weights
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"

State = dict[str, torch.Tensor]


# ---- reading peer files --------------------------------------------------------------------------
def _read_safetensors(path: Path) -> State:
    """Every tensor of one safetensors file, read key by key so a damaged tensor is named."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights from {path} (truncated or not a safetensors file?): {err}") from None
    state = {}
    with handle as f:
        for key in f.keys():
            try:
                state[key] = f.get_tensor(key)
            except (SafetensorError, OSError, ValueError, RuntimeError) as err:
                raise ValueError(f"cannot read tensor {key!r} from {path}: {err}") from None
    return state


def _read_pickle(path: Path) -> State:
    """A torch pickle loaded with ``weights_only=True``: tensors only, no code runs."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights from {path} (loaded with weights_only=True): {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} must hold a dict of tensors (a state_dict)")
    return state


def read_weights(directory: Path) -> tuple[State, Path]:
    """The tensors of a checkpoint directory and the file they came from.

    Looks for ``model.safetensors``, then a sharded ``model.safetensors.index.json``, then
    ``pytorch_model.bin`` (loaded with ``weights_only=True``).
    """
    single = directory / SAFETENSORS_NAME
    if single.is_file():
        return _read_safetensors(single), single
    index = directory / SAFETENSORS_INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' object")
        state: State = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = directory / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"weights shard not found: {shard_path} (listed in {index})")
            state.update(_read_safetensors(shard_path))
        return state, index
    pickle_path = directory / PICKLE_NAME
    if pickle_path.is_file():
        return _read_pickle(pickle_path), pickle_path
    raise FileNotFoundError(f"no weights in {directory}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} "
                            f"or {PICKLE_NAME}")


# ---- option checks ---------------------------------------------------------------------------
def refuse(source: str, option: str, value: object, why: str) -> ValueError:
    """The error for a peer option lrnn cannot reproduce (the caller raises it)."""
    return ValueError(f"{source}: unsupported option {option}={value!r}: {why}")


def require(source: str, config: dict[str, Any], option: str, allowed: Callable[[Any], bool], default: Any,
            why: str) -> Any:
    """``config[option]`` (or ``default``) if ``allowed`` accepts it, else an error naming the option."""
    value = config.get(option, default)
    if not allowed(value):
        raise refuse(source, option, value, why)
    return value


def get_int(source: str, config: dict[str, Any], option: str, default: Any = None, minimum: int = 1) -> int:
    """An integer option (required when ``default`` is None)."""
    if option not in config and default is None:
        raise ValueError(f"{source}: missing config key {option!r}")
    return check_int(f"{source}: config key {option!r}", config.get(option, default), minimum)


def get_positive(source: str, config: dict[str, Any], option: str, default: float) -> float:
    """A number > 0 (``default`` when absent), e.g. a norm epsilon."""
    return check_number(f"{source}: config key {option!r}", config.get(option, default), 0, strict=True)


def get_bool(source: str, config: dict[str, Any], option: str, default: bool) -> bool:
    """A true/false option (``default`` when absent)."""
    return require(source, config, option, lambda v: isinstance(v, bool), default, "must be true or false")


def check_known(source: str, config: dict[str, Any], known: set[str], what: str = "config key") -> None:
    """Refuse keys this importer does not understand (they might change the math)."""
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{source}: unsupported {what}(s) {unknown}; lrnn understands {sorted(known)}")


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _json_float(value: Any) -> Any:
    """HF transformers >= 5 writes non-finite floats as ``{"__float__": "Infinity"}``; decode that form."""
    if isinstance(value, dict) and set(value) == {"__float__"} and isinstance(value["__float__"], str):
        try:
            return float(value["__float__"])
        except ValueError:
            return value
    return value


def dt_limit_of(source: str, option: str, value: Any) -> tuple[float, float]:
    """A ``(low, high)`` dt clamp from JSON (``Infinity`` and HF's ``{"__float__": "Infinity"}`` allowed)."""
    if isinstance(value, (list, tuple)):
        value = [_json_float(v) for v in value]
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(f"{source}: {option} must be a pair [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0.0 <= low < high or math.isnan(high):
        raise ValueError(f"{source}: {option} must satisfy 0 <= low < high, got {value!r}")
    return low, high


def config_special_tokens(config: dict[str, Any], directory: Path) -> SpecialTokens:
    """The bos / eos / pad ids of an HF-style ``config.json`` (HF and fla keep them there)."""
    return SpecialTokens.from_dict(config, str(directory / CONFIG_NAME))


# ---- export checks ---------------------------------------------------------------------------
def refuse_export(fmt: str, option: str, value: object, why: str) -> ValueError:
    """The error for an lrnn option format ``fmt`` cannot express (the caller raises it)."""
    return ValueError(f"export to {fmt}: unsupported option {option}={value!r}: {why}")


def single_mixer(model: LanguageModel, allowed: tuple[str, ...], fmt: str) -> str:
    """The one mixer name every layer uses (refuse hybrids, other mixers and token classifiers)."""
    names = set(model.config.layer_mixers())
    if len(names) != 1 or not names <= set(allowed):
        raise refuse_export(fmt, "mixer", sorted(names), f"the {fmt} format holds one of {list(allowed)} in every layer")
    if model.config.num_labels is not None:
        raise refuse_export(fmt, "num_labels", model.config.num_labels, "the format has a language-model head only")
    return names.pop()


# ---- key mapping -----------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyMap:
    """Prefix renaming between a peer's parameter names and lrnn's, both ways.

    ``rules``: ``(peer prefix, lrnn prefix)`` templates; ``{i}`` matches a layer index.
    """

    rules: tuple[tuple[str, str], ...]
    _compiled: list = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        def pattern(template: str) -> re.Pattern:
            return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)"))

        self._compiled.extend((pattern(p), p, pattern(l), l) for p, l in self.rules)

    @staticmethod
    def _rename(key: str, source: re.Pattern, target: str) -> str | None:
        m = source.match(key)
        if m is None:
            return None
        prefix = target.replace("{i}", m.group("i")) if "{i}" in target else target
        return prefix + key[m.end():]

    def to_lrnn(self, key: str) -> str | None:
        for peer_re, _, _, lrnn in self._compiled:
            renamed = self._rename(key, peer_re, lrnn)
            if renamed is not None:
                return renamed
        return None

    def to_peer(self, key: str) -> str | None:
        for _, peer, lrnn_re, _ in self._compiled:
            renamed = self._rename(key, lrnn_re, peer)
            if renamed is not None:
                return renamed
        return None


def skip_tied_head(config: ModelConfig) -> Callable[[str], bool]:
    """The ``ignore`` of ``load_peer_state`` for the peers: a tied model's ``lm_head.weight`` (some peers store
    the embedding again under that name) is skipped."""
    return lambda key: config.tie_embeddings and key == "lm_head.weight"


def load_peer_state(model: LanguageModel, peer: State, keymap: KeyMap, source: Path,
                    ignore: Callable[[str], bool] = lambda key: False) -> dict[str, torch.dtype]:
    """Rename ``peer`` tensors with ``keymap`` and load them into ``model``, each in its stored dtype.

    Unknown, missing and mis-shaped tensors raise a ValueError naming ``source`` and the peer key;
    ``ignore(peer_key)`` marks tensors to skip (e.g. a tied ``lm_head.weight``). Returns the source
    dtype of every lrnn parameter.
    """
    expected = model.checkpoint_state()
    renamed: State = {}
    origin: dict[str, str] = {}
    for key, tensor in peer.items():
        if ignore(key):
            continue
        name = keymap.to_lrnn(key)
        if name is None or name not in expected:
            raise ValueError(f"{source}: unknown key {key!r} (no lrnn parameter corresponds to it under this config)")
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the config expects "
                             f"{tuple(expected[name].shape)}")
        renamed[name], origin[name] = tensor, key
    missing = [keymap.to_peer(name) or name for name in expected if name not in renamed]
    if missing:
        raise ValueError(f"{source}: missing key {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more: {missing[1:6]})" if len(missing) > 1 else ""))
    dtypes = {name: t.dtype for name, t in renamed.items()}
    cast_tensors_(model, dtypes)  # load_state_dict would convert the values to the model's float32
    model.load_state_dict(renamed, strict=False)
    return dtypes


def peer_state(model: LanguageModel, keymap: KeyMap, dtypes: dict[str, torch.dtype] | None = None) -> State:
    """``model``'s tensors under the peer's names (tied head omitted; cast back to ``dtypes`` if given)."""
    out: State = {}
    for name, tensor in model.checkpoint_state().items():
        key = keymap.to_peer(name)
        if key is None:
            raise ValueError(f"lrnn parameter {name!r} has no counterpart in this format")
        dtype = (dtypes or {}).get(name, tensor.dtype)
        out[key] = tensor.detach().to(dtype)
    return out


# ---- writing peer files ------------------------------------------------------------------------
def write_config(directory: Path, config: dict[str, Any]) -> None:
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_safetensors(directory: Path, state: State) -> None:
    save_weights(state, directory / SAFETENSORS_NAME)


def write_pickle(directory: Path, state: State) -> None:
    """``pytorch_model.bin`` (a plain state_dict of tensors), atomically."""
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    atomic_write(directory / PICKLE_NAME, lambda tmp: torch.save(tensors, tmp))
