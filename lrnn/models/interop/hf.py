"""HF transformers' Mamba (``model_type: mamba``) and Mamba-2 (``model_type: mamba2``) checkpoints.

Format: ``config.json`` (``hidden_size, num_hidden_layers, state_size, expand, conv_kernel, n_groups,
num_heads, head_dim, use_bias, use_conv_bias, hidden_act, layer_norm_epsilon, time_step_limit,
time_step_rank, chunk_size, tie_word_embeddings, bos_token_id, eos_token_id, pad_token_id, ...``) and ``model.safetensors`` with ``backbone.embeddings.weight``,
``backbone.layers.{i}.{norm, mixer}.*``, ``backbone.norm_f.weight``, ``lm_head.weight`` (omitted when tied).
HF's Mamba-2 is mamba_ssm's with D per head, the gated norm after the gate, its norm epsilon shared with
the block norms and no MLP; the vocabulary is not padded (HF stores the padded size as ``vocab_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrnn.models.config import ModelConfig
from lrnn.models.interop.common import config_special_tokens as special_tokens  # HF keeps the ids in config.json
from lrnn.models.interop.common import (KeyMap, dt_limit_of, get_bool, get_int, get_positive, refuse_export,
                                        require, single_mixer, write_config, write_safetensors)
from lrnn.models.interop.mamba_ssm import (CHUNK_SIZE, check_exportable_mixer, mamba1_options, mamba2_options,
                                           mamba_peer_state)
from lrnn.models.lm import LanguageModel

# The interface every format module offers ``checkpoints`` (plus its own public helpers).
__all__ = ["NAME", "MODEL_TYPES", "KEYMAP", "is_config", "to_lrnn_config", "special_tokens", "from_lrnn_config", "save"]

NAME = "hf"
MODEL_TYPES = ("mamba", "mamba2")
KEYMAP = KeyMap((("backbone.embeddings.", "embedding."), ("backbone.embedding.", "embedding."),
                 ("backbone.layers.{i}.", "layers.{i}."), ("backbone.norm_f.", "norm_f."), ("lm_head.", "head.")))
# HF's own class defaults, used when a config.json omits a key (tie_word_embeddings differs between them).
DEFAULT_TIED = {"mamba": True, "mamba2": False}


def is_config(config: dict[str, Any]) -> bool:
    return config.get("model_type") in MODEL_TYPES


def to_lrnn_config(config: dict[str, Any], source: str) -> ModelConfig:
    """The lrnn ``ModelConfig`` of an HF Mamba / Mamba2 ``config.json``."""
    model_type = config.get("model_type")
    require(source, config, "hidden_act", lambda v: v in ("silu", "swish"), "silu",
            "lrnn's Mamba layers use SiLU after the short conv")
    d_model = get_int(source, config, "hidden_size")
    expand = get_int(source, config, "expand", 2)
    eps = get_positive(source, config, "layer_norm_epsilon", 1e-5)
    common = dict(vocab_size=get_int(source, config, "vocab_size"), d_model=d_model,
                  n_layers=get_int(source, config, "num_hidden_layers"), d_intermediate=0,
                  tie_embeddings=get_bool(source, config, "tie_word_embeddings", DEFAULT_TIED[model_type]),
                  pad_vocab_size_multiple=1, norm_eps=eps)
    if model_type == "mamba2":
        head_dim = get_int(source, config, "head_dim", 64)
        num_heads = get_int(source, config, "num_heads", 128)
        if num_heads * head_dim != expand * d_model:
            raise ValueError(f"{source}: num_heads * head_dim ({num_heads} * {head_dim}) must equal "
                             f"expand * hidden_size ({expand} * {d_model})")
        limit = config.get("time_step_limit", (0.0, float("inf")))
        kwargs = {"d_state": get_int(source, config, "state_size", 128),
                  "d_conv": get_int(source, config, "conv_kernel", 4), "expand": expand, "headdim": head_dim,
                  "ngroups": get_int(source, config, "n_groups", 8), "bias": get_bool(source, config, "use_bias", False),
                  "conv_bias": get_bool(source, config, "use_conv_bias", True),
                  "dt_limit": dt_limit_of(source, "time_step_limit", limit),
                  "chunk_size": get_int(source, config, "chunk_size", CHUNK_SIZE),
                  "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False, "norm_eps": eps}
        return ModelConfig(mixer="mamba2", mixer_kwargs={"mamba2": kwargs}, **common)
    rank = config.get("time_step_rank", "auto")
    kwargs = {"d_state": get_int(source, config, "state_size", 16), "d_conv": get_int(source, config, "conv_kernel", 4),
              "expand": expand, "dt_rank": "auto" if rank == "auto" else get_int(source, config, "time_step_rank"),
              "bias": get_bool(source, config, "use_bias", False),
              "conv_bias": get_bool(source, config, "use_conv_bias", True)}
    return ModelConfig(mixer="mamba", mixer_kwargs={"mamba": kwargs}, **common)


def from_lrnn_config(model: LanguageModel) -> dict[str, Any]:
    """HF's ``config.json`` for ``model`` (``vocab_size`` is lrnn's padded size: HF does not pad)."""
    name = single_mixer(model, ("mamba", "mamba2"), "HF transformers")
    config, mixer = model.config, model.layers[0].mixer
    check_exportable_mixer(mixer, "HF transformers")
    if config.d_intermediate:
        raise refuse_export(NAME, "d_intermediate", config.d_intermediate, "HF's Mamba blocks have no MLP")
    common = {"vocab_size": config.padded_vocab_size, "hidden_size": config.d_model,
              "num_hidden_layers": config.n_layers, "layer_norm_epsilon": config.norm_eps, "hidden_act": "silu",
              "tie_word_embeddings": config.tie_embeddings, "residual_in_fp32": True, "use_cache": True,
              **model.special_tokens.to_dict()}
    if name == "mamba2":
        opts = mamba2_options(mixer)
        for option, value, why in (("D_has_hdim", True, "HF's Mamba2 has one D per head"),
                                   ("rmsnorm", False, "HF's Mamba2 always applies the gated RMSNorm"),
                                   ("norm_before_gate", True, "HF's Mamba2 normalises after the gate")):
            if opts[option] == value:
                raise refuse_export(NAME, f"mamba2.{option}", value, why)
        if mixer.norm.eps != config.norm_eps:
            raise refuse_export(NAME, "mamba2.norm_eps", mixer.norm.eps,
                                f"HF's Mamba2 uses layer_norm_epsilon ({config.norm_eps}) for its gated norm too")
        return {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", **common,
                "state_size": opts["d_state"], "expand": opts["expand"], "conv_kernel": opts["d_conv"],
                "n_groups": opts["ngroups"], "num_heads": mixer.nheads, "head_dim": opts["headdim"],
                "use_bias": opts["bias"], "use_conv_bias": opts["conv_bias"], "time_step_limit": opts["dt_limit"],
                "chunk_size": opts["chunk_size"]}
    opts = mamba1_options(mixer)
    return {"architectures": ["MambaForCausalLM"], "model_type": "mamba", **common, "state_size": opts["d_state"],
            "expand": opts["expand"], "conv_kernel": opts["d_conv"], "time_step_rank": opts["dt_rank"],
            "use_bias": opts["bias"], "use_conv_bias": opts["conv_bias"]}


def save(model: LanguageModel, directory: Path, dtypes=None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (tied head omitted, as HF's save_pretrained does)."""
    config = from_lrnn_config(model)
    state = mamba_peer_state(model, KEYMAP, dtypes)
    write_safetensors(directory, state)
    write_config(directory, config)
