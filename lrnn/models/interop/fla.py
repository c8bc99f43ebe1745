"""flash-linear-attention (fla) checkpoints: DeltaNet, Gated DeltaNet and Gated DeltaProduct LMs.

Format (HF-style, ``model_type`` ``delta_net`` / ``gated_deltanet`` / ``gated_deltaproduct``):
``config.json`` and ``model.safetensors`` with ``model.embeddings.weight``,
``model.layers.{i}.attn_norm.weight``, ``model.layers.{i}.attn.{q,k,v,b,a,g,o}_proj.weight``,
``...attn.{q,k,v}_conv1d.weight``, ``...attn.{A_log, dt_bias, o_norm.weight}``,
``model.layers.{i}.mlp_norm.weight``, ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``,
``model.norm.weight``, ``lm_head.weight``. fla's negative-eigenvalue flag ``allow_neg_eigval``
(beta times 2) is lrnn's ``negative_eigenvalues``. fla's SwiGLU MLP ``down(silu(gate x) * up x)`` is
lrnn's ``fc2(y * silu(g))`` with ``[y, g] = fc1 x``, so ``fc1 = [up; gate]``. The special token ids
(``bos_token_id``, ``eos_token_id``, ``pad_token_id``) are read from and written to ``config.json``, as in HF.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lrnn.layers import DeltaNet
from lrnn.models.config import ModelConfig
from lrnn.models.interop.common import config_special_tokens as special_tokens  # HF-style: the ids are in config.json
from lrnn.models.interop.common import (KeyMap, State, get_bool, get_int, get_positive, peer_state, refuse_export,
                                        require, round_up, single_mixer, write_config, write_safetensors)
from lrnn.models.lm import LanguageModel

# The interface every format module offers ``checkpoints`` (plus its own public helpers).
__all__ = ["NAME", "MODEL_TYPES", "KEYMAP", "is_config", "to_lrnn_config", "special_tokens", "prepare_state",
           "from_lrnn_config", "split_state", "save"]

NAME = "fla"
MODEL_TYPES = ("delta_net", "gated_deltanet", "gated_deltaproduct")
LRNN_MIXER = {"delta_net": "deltanet", "gated_deltanet": "gated_deltanet", "gated_deltaproduct": "deltaproduct"}
KEYMAP = KeyMap((("model.embeddings.", "embedding."), ("model.layers.{i}.attn_norm.", "layers.{i}.norm."),
                 ("model.layers.{i}.attn.", "layers.{i}.mixer."), ("model.layers.{i}.mlp_norm.", "layers.{i}.norm2."),
                 ("model.layers.{i}.mlp.", "layers.{i}.mlp."), ("model.norm.", "norm_f."), ("lm_head.", "head.")))
_MLP = re.compile(r"^(model\.layers\.\d+\.mlp\.)(gate_proj|up_proj|down_proj)\.weight$")


def is_config(config: dict[str, Any]) -> bool:
    return config.get("model_type") in MODEL_TYPES


def mlp_size(source: str, config: dict[str, Any], hidden: int) -> int:
    """fla's GatedMLP width: ``intermediate_size``, else ``hidden * hidden_ratio * 2/3`` rounded up to 256."""
    if config.get("intermediate_size") is not None:
        return get_int(source, config, "intermediate_size")
    ratio = config.get("hidden_ratio") or 4
    return round_up(int(hidden * ratio * 2 / 3), 256)


def _mixer_kwargs(source: str, config: dict[str, Any], model_type: str, hidden: int, eps: float) -> dict[str, Any]:
    """lrnn ``DeltaNet`` arguments of one fla layer type."""
    use_conv = get_bool(source, config, "use_short_conv", True)
    kwargs: dict[str, Any] = {"num_heads": get_int(source, config, "num_heads", 16 if model_type == "delta_net" else 6),
                              "conv_size": get_int(source, config, "conv_size", 4) if use_conv else 0,
                              "conv_bias": get_bool(source, config, "conv_bias", False), "norm_eps": eps}
    heads = kwargs["num_heads"]
    if model_type == "delta_net":
        require(source, config, "qk_activation", lambda v: v == "silu", "silu", "lrnn's DeltaNet uses SiLU on q and k")
        require(source, config, "qk_norm", lambda v: v == "l2", "l2", "lrnn's DeltaNet L2-normalises q and k")
        require(source, config, "use_beta", lambda v: v is True, True, "lrnn's DeltaNet always learns beta")
        require(source, config, "use_output_norm", lambda v: v is True, True, "lrnn's DeltaNet always normalises o")
        key_dim = int(hidden * config.get("expand_k", 1.0))
        value_dim = int(hidden * config.get("expand_v", 1.0))
        if key_dim % heads or value_dim % heads:
            raise ValueError(f"{source}: key dim {key_dim} and value dim {value_dim} must be divisible by "
                             f"num_heads = {heads}")
        kwargs.update(head_dim=key_dim // heads, expand_v=(value_dim // heads) / (key_dim // heads),
                      use_output_gate=get_bool(source, config, "use_gate", False))
        return kwargs
    require(source, config, "num_v_heads", lambda v: v is None or v == heads, None,
            "grouped value heads (num_v_heads > num_heads) are not supported by lrnn's DeltaNet")
    kwargs.update(head_dim=get_int(source, config, "head_dim", 256), expand_v=float(config.get("expand_v", 2.0)))
    if model_type == "gated_deltanet":
        kwargs.update(use_forget_gate=True, use_output_gate=get_bool(source, config, "use_gate", True))
    else:
        gate_key = "use_output_gate" if "use_output_gate" in config else "use_gate"
        kwargs.update(num_householder=get_int(source, config, "num_householder", 1),
                      use_forget_gate=get_bool(source, config, "use_forget_gate", False),
                      use_output_gate=get_bool(source, config, gate_key, True))
    return kwargs


def to_lrnn_config(config: dict[str, Any], source: str) -> ModelConfig:
    """The lrnn ``ModelConfig`` of an fla ``config.json``; options lrnn lacks are refused by name."""
    model_type = config["model_type"]
    require(source, config, "attn", lambda v: v is None, None,
            "fla's hybrid attention layers (with rotary embeddings) are not mapped to lrnn")
    require(source, config, "hidden_act", lambda v: v in ("swish", "silu"), "swish", "lrnn's MLP is SwiGLU")
    hidden = get_int(source, config, "hidden_size")
    eps = get_positive(source, config, "norm_eps", 1e-6)
    mixer = LRNN_MIXER[model_type]
    return ModelConfig(vocab_size=get_int(source, config, "vocab_size"), d_model=hidden,
                       n_layers=get_int(source, config, "num_hidden_layers"), mixer=mixer,
                       negative_eigenvalues=get_bool(source, config, "allow_neg_eigval", False),
                       mixer_kwargs={mixer: _mixer_kwargs(source, config, model_type, hidden, eps)},
                       d_intermediate=mlp_size(source, config, hidden),
                       tie_embeddings=get_bool(source, config, "tie_word_embeddings", False), norm_eps=eps)


def prepare_state(state: State, source: Path) -> State:
    """Merge each layer's ``gate_proj`` / ``up_proj`` into lrnn's ``fc1`` and rename ``down_proj`` to ``fc2``."""
    out: State = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _MLP.match(key)
        if m is None:
            out[key] = tensor
        else:
            parts.setdefault(m.group(1), {})[m.group(2)] = tensor
    for prefix, got in parts.items():
        for name in ("gate_proj", "up_proj", "down_proj"):
            if name not in got:
                raise ValueError(f"{source}: missing key {prefix + name + '.weight'!r}")
        if got["gate_proj"].shape != got["up_proj"].shape:
            raise ValueError(f"{source}: tensor {prefix + 'gate_proj.weight'!r} has shape "
                             f"{tuple(got['gate_proj'].shape)}"
                             f" but {prefix + 'up_proj.weight'!r} has {tuple(got['up_proj'].shape)}")
        out[prefix + "fc1.weight"] = torch.cat([got["up_proj"], got["gate_proj"]], dim=0)
        out[prefix + "fc2.weight"] = got["down_proj"]
    return out


# ---- export -------------------------------------------------------------------------------------
def from_lrnn_config(model: LanguageModel) -> dict[str, Any]:
    """fla's ``config.json`` for a DeltaNet-family ``model``."""
    single_mixer(model, ("deltanet", "gated_deltanet", "deltaproduct"), NAME)
    config = model.config
    mixer: DeltaNet = model.layers[0].mixer
    if not config.d_intermediate:
        raise refuse_export(NAME, "d_intermediate", 0, "every fla block has a SwiGLU MLP")
    if mixer.use_short_conv and mixer.q_conv1d.bias is not None:
        raise refuse_export(NAME, "conv_bias", True, "fla's model configs build short convs without bias")
    if mixer.o_norm.eps != config.norm_eps:
        raise refuse_export(NAME, "norm_eps", mixer.o_norm.eps, f"fla uses norm_eps ({config.norm_eps}) for o_norm too")
    common = {"vocab_size": config.padded_vocab_size, "hidden_size": config.d_model,
              "num_hidden_layers": config.n_layers, "norm_eps": config.norm_eps, "hidden_act": "swish",
              "intermediate_size": config.d_intermediate, "tie_word_embeddings": config.tie_embeddings,
              "use_short_conv": mixer.use_short_conv, "conv_bias": False, "attn": None, "attn_mode": "chunk",
              "conv_size": mixer.q_conv1d.weight.shape[-1] if mixer.use_short_conv else 4,
              "num_heads": mixer.num_heads, "allow_neg_eigval": mixer.negative_eigenvalues, "fuse_cross_entropy": True,
              **model.special_tokens.to_dict()}
    expand_v = mixer.value_dim / mixer.head_dim
    plain = mixer.num_householder == 1 and not mixer.use_forget_gate
    if plain and not mixer.negative_eigenvalues:
        keys = mixer.num_heads * mixer.head_dim
        return {"architectures": ["DeltaNetForCausalLM"], "model_type": "delta_net", **common,
                "expand_k": keys / config.d_model, "expand_v": mixer.num_heads * mixer.value_dim / config.d_model,
                "use_gate": mixer.use_output_gate, "use_beta": True, "use_output_norm": True,
                "qk_norm": "l2", "qk_activation": "silu"}
    if mixer.num_householder == 1 and mixer.use_forget_gate:
        return {"architectures": ["GatedDeltaNetForCausalLM"], "model_type": "gated_deltanet", **common,
                "head_dim": mixer.head_dim, "expand_v": expand_v, "use_gate": mixer.use_output_gate}
    # DeltaProduct, and plain DeltaNet with negative eigenvalues (fla's delta_net model may drop the flag).
    return {"architectures": ["GatedDeltaProductForCausalLM"], "model_type": "gated_deltaproduct", **common,
            "head_dim": mixer.head_dim, "expand_v": expand_v, "use_output_gate": mixer.use_output_gate,
            "use_forget_gate": mixer.use_forget_gate, "num_householder": mixer.num_householder}


def split_state(state: State) -> State:
    """Inverse of ``prepare_state``: lrnn's ``fc1`` back into ``up_proj`` / ``gate_proj``."""
    out: State = {}
    for key, tensor in state.items():
        if key.endswith(".mlp.fc1.weight"):
            prefix = key[: -len("fc1.weight")]
            up, gate = tensor.chunk(2, dim=0)
            out[prefix + "up_proj.weight"], out[prefix + "gate_proj.weight"] = up, gate
        elif key.endswith(".mlp.fc2.weight"):
            out[key[: -len("fc2.weight")] + "down_proj.weight"] = tensor
        else:
            out[key] = tensor
    return out


def save(model: LanguageModel, directory: Path, dtypes=None) -> None:
    config = from_lrnn_config(model)
    write_safetensors(directory, split_state(peer_state(model, KEYMAP, dtypes)))
    write_config(directory, config)
