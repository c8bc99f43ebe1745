"""mamba_ssm (state-spaces/mamba) checkpoints: ``MambaLMHeadModel`` with Mamba or Mamba-2 mixers.

Format: ``config.json`` with ``d_model, d_intermediate, n_layer, vocab_size, ssm_cfg, attn_layer_idx,
attn_cfg, rms_norm, residual_in_fp32, fused_add_norm, pad_vocab_size_multiple, tie_embeddings`` and
``pytorch_model.bin`` (or ``model.safetensors``) with ``backbone.embedding.weight``,
``backbone.layers.{i}.{norm, mixer, norm2, mlp}.*``, ``backbone.norm_f.weight``, ``lm_head.weight``.
mamba_ssm's residual stream ``residual = hidden + residual; hidden = mixer(norm(residual))`` is the
pre-norm block ``x + mixer(norm(x))`` of lrnn, so only names change. Options that only affect
initialisation or kernels (``dt_min``, ``A_init_range``, ``fused_add_norm``, ...) are ignored; options that
change the math are mapped or refused by name. Mamba-2's ``chunk_size`` is mapped (lrnn's Mamba2 has the same
chunked algorithm). mamba_ssm's config has no special token ids: lrnn keeps them in ``generation_config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrnn.layers import Mamba, Mamba2
from lrnn.models.config import ModelConfig
from lrnn.models.generation import SpecialTokens
from lrnn.models.interop.common import (KeyMap, State, check_known, dt_limit_of, get_bool, get_int, peer_state,
                                        refuse_export, require, round_up, single_mixer, write_config, write_pickle)
from lrnn.models.io import load_special_tokens, save_special_tokens
from lrnn.models.lm import LanguageModel

# The interface every format module offers ``checkpoints`` (plus its own public helpers).
__all__ = ["NAME", "KEYMAP", "CHUNK_SIZE", "is_config", "to_lrnn_config", "special_tokens", "from_lrnn_config", "save",
           "check_exportable_mixer", "mamba1_options", "mamba2_options", "mamba_peer_state"]

NAME = "mamba_ssm"
KEYMAP = KeyMap((("backbone.embedding.", "embedding."), ("backbone.layers.{i}.", "layers.{i}."),
                 ("backbone.norm_f.", "norm_f."), ("lm_head.", "head.")))
NORM_EPS = 1e-5  # mamba_ssm's MixerModel and Mamba-2's gated norm hard-code this epsilon
MLP_MULTIPLE = 128  # mamba_ssm's GatedMLP rounds d_intermediate up to a multiple of 128
CHUNK_SIZE = 256  # the chunk length of mamba_ssm's Mamba2 and HF's Mamba2 when their config omits it

TOP_KEYS = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg", "rms_norm",
            "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}
# Keys that only set initialisation, kernels or device placement: no effect on a trained model's outputs.
INIT_ONLY = {"layer", "dt_min", "dt_max", "dt_init_floor", "dt_init", "dt_scale", "A_init_range", "conv_init",
             "use_mem_eff_path", "use_fast_path", "layer_idx", "device", "dtype"}
MAMBA2_MATH = {"d_state", "d_conv", "expand", "headdim", "ngroups", "D_has_hdim", "rmsnorm", "norm_before_gate",
               "dt_limit", "bias", "conv_bias", "d_ssm", "process_group", "sequence_parallel", "chunk_size"}
MAMBA1_MATH = {"d_state", "d_conv", "expand", "dt_rank", "bias", "conv_bias"}


def is_config(config: dict[str, Any]) -> bool:
    return "ssm_cfg" in config or ("n_layer" in config and "d_model" in config)


def mamba2_kwargs(source: str, ssm: dict[str, Any], d_model: int) -> dict[str, Any]:
    """lrnn ``Mamba2`` arguments from mamba_ssm's ``ssm_cfg``."""
    check_known(source, ssm, MAMBA2_MATH | INIT_ONLY, "ssm_cfg key")
    kwargs = {"d_state": get_int(source, ssm, "d_state", 128), "d_conv": get_int(source, ssm, "d_conv", 4),
              "expand": get_int(source, ssm, "expand", 2), "headdim": get_int(source, ssm, "headdim", 64),
              "ngroups": get_int(source, ssm, "ngroups", 1),
              "D_has_hdim": get_bool(source, ssm, "D_has_hdim", False),
              "rmsnorm": get_bool(source, ssm, "rmsnorm", True),
              "norm_before_gate": get_bool(source, ssm, "norm_before_gate", False),
              "bias": get_bool(source, ssm, "bias", False), "conv_bias": get_bool(source, ssm, "conv_bias", True),
              "dt_limit": dt_limit_of(source, "ssm_cfg.dt_limit", ssm.get("dt_limit", (0.0, float("inf")))),
              "chunk_size": get_int(source, ssm, "chunk_size", CHUNK_SIZE), "norm_eps": NORM_EPS}
    d_inner = kwargs["expand"] * d_model
    require(source, ssm, "d_ssm", lambda v: v is None or v == d_inner, None,
            f"lrnn's Mamba2 runs the SSM over all expand * d_model = {d_inner} channels (no extra MLP part)")
    require(source, ssm, "process_group", lambda v: v is None, None, "tensor parallelism is not supported")
    return kwargs


def mamba1_kwargs(source: str, ssm: dict[str, Any]) -> dict[str, Any]:
    """lrnn ``Mamba`` arguments from mamba_ssm's ``ssm_cfg``."""
    check_known(source, ssm, MAMBA1_MATH | INIT_ONLY, "ssm_cfg key")
    dt_rank = ssm.get("dt_rank", "auto")
    if dt_rank != "auto":
        dt_rank = get_int(source, ssm, "dt_rank")
    return {"d_state": get_int(source, ssm, "d_state", 16), "d_conv": get_int(source, ssm, "d_conv", 4),
            "expand": get_int(source, ssm, "expand", 2), "dt_rank": dt_rank,
            "bias": get_bool(source, ssm, "bias", False), "conv_bias": get_bool(source, ssm, "conv_bias", True)}


def to_lrnn_config(config: dict[str, Any], source: str) -> ModelConfig:
    """The lrnn ``ModelConfig`` of a mamba_ssm ``config.json``; unsupported options are refused by name."""
    check_known(source, config, TOP_KEYS)
    ssm = config.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise ValueError(f"{source}: ssm_cfg must be an object, got {ssm!r}")
    layer = require(source, ssm, "layer", lambda v: v in ("Mamba1", "Mamba2"), "Mamba1",
                    "lrnn imports the Mamba1 and Mamba2 layers")
    require(source, config, "attn_layer_idx", lambda v: not v, [],
            "hybrid attention layers of mamba_ssm (MHA with rotary embeddings) are not mapped to lrnn")
    require(source, config, "rms_norm", lambda v: v is True, True, "lrnn's blocks use RMSNorm, not LayerNorm")
    d_model = get_int(source, config, "d_model")
    d_intermediate = get_int(source, config, "d_intermediate", 0, minimum=0)
    mixer = "mamba2" if layer == "Mamba2" else "mamba"
    kwargs = mamba2_kwargs(source, ssm, d_model) if layer == "Mamba2" else mamba1_kwargs(source, ssm)
    return ModelConfig(vocab_size=get_int(source, config, "vocab_size"), d_model=d_model,
                       n_layers=get_int(source, config, "n_layer"), mixer=mixer, mixer_kwargs={mixer: kwargs},
                       d_intermediate=round_up(d_intermediate, MLP_MULTIPLE) if d_intermediate else 0,
                       tie_embeddings=get_bool(source, config, "tie_embeddings", True),
                       pad_vocab_size_multiple=get_int(source, config, "pad_vocab_size_multiple", 8),
                       norm_eps=NORM_EPS)


def special_tokens(config: dict[str, Any], directory: Path) -> SpecialTokens:
    """The bos / eos / pad ids kept beside the checkpoint (mamba_ssm's ``config.json`` has no keys for them)."""
    return load_special_tokens(directory)


# ---- export -------------------------------------------------------------------------------------
def check_exportable_mixer(mixer, fmt: str) -> None:
    """Options of an lrnn Mamba/Mamba2 layer that no mamba peer has."""
    if mixer.negative_eigenvalues:
        raise refuse_export(fmt, "negative_eigenvalues", True, f"{fmt} has no [-1, 1] eigenvalue range "
                            "(its scan computes exp(dt * A) in (0, 1])")
    if isinstance(mixer, Mamba) and mixer.reorder is not None:
        raise refuse_export(fmt, "reorder_tau", mixer.reorder.tau, f"{fmt} has no importance reordering")


def mamba2_options(mixer: Mamba2) -> dict[str, Any]:
    """The math-relevant options of a built lrnn Mamba2 layer (read from the module, not the config)."""
    return {"d_state": mixer.d_state, "d_conv": mixer.conv1d.weight.shape[-1], "expand": mixer.d_inner // mixer.d_model,
            "headdim": mixer.headdim, "ngroups": mixer.ngroups, "D_has_hdim": mixer.D_has_hdim,
            "rmsnorm": mixer.rmsnorm, "norm_before_gate": bool(mixer.norm is not None and mixer.norm.norm_before_gate),
            "dt_limit": list(mixer.dt_limit), "bias": mixer.in_proj.bias is not None,
            "conv_bias": mixer.conv1d.bias is not None, "chunk_size": mixer.chunk_size}


def mamba1_options(mixer: Mamba) -> dict[str, Any]:
    return {"d_state": mixer.d_state, "d_conv": mixer.conv1d.weight.shape[-1], "expand": mixer.d_inner // mixer.d_model,
            "dt_rank": mixer.dt_rank, "bias": mixer.in_proj.bias is not None,
            "conv_bias": mixer.conv1d.bias is not None}


def mamba_peer_state(model: LanguageModel, keymap: KeyMap, dtypes=None) -> State:
    """``peer_state`` with the plain ``x_proj.weight`` of every ``token_dynamics`` Mamba layer in place of the
    tensors it is computed from (``SignedXProj.weight``, in the dtype its tensors are written in): the peers
    know only a plain x_proj, and the function of the layer is the same."""
    state = peer_state(model, keymap, dtypes)
    for i, block in enumerate(model.layers):
        mixer = block.mixer
        if isinstance(mixer, Mamba) and mixer.token_dynamics is not None:
            prefix = keymap.to_peer(f"layers.{i}.mixer.x_proj.")
            dtype = state[prefix + "dt_weight"].dtype
            for name, _ in mixer.x_proj.named_parameters():
                del state[prefix + name]
            state[prefix + "weight"] = mixer.x_proj.weight.detach().to(dtype)
    return state


def from_lrnn_config(model: LanguageModel) -> dict[str, Any]:
    """mamba_ssm's ``config.json`` for ``model``; options mamba_ssm cannot express are refused by name."""
    name = single_mixer(model, ("mamba", "mamba2"), NAME)
    config = model.config
    mixer = model.layers[0].mixer
    check_exportable_mixer(mixer, NAME)
    if config.norm_eps != NORM_EPS:
        raise refuse_export(NAME, "norm_eps", config.norm_eps, f"mamba_ssm uses {NORM_EPS}")
    if config.d_intermediate % MLP_MULTIPLE:
        raise refuse_export(NAME, "d_intermediate", config.d_intermediate,
                            f"mamba_ssm's GatedMLP rounds it up to a multiple of {MLP_MULTIPLE}")
    if name == "mamba2":
        ssm = {"layer": "Mamba2", **mamba2_options(mixer)}
        if mixer.norm is not None and mixer.norm.eps != NORM_EPS:
            raise refuse_export(NAME, "mamba2.norm_eps", mixer.norm.eps, f"mamba_ssm's gated norm uses {NORM_EPS}")
    else:
        ssm = {"layer": "Mamba1", **mamba1_options(mixer)}
    return {"d_model": config.d_model, "d_intermediate": config.d_intermediate, "n_layer": config.n_layers,
            "vocab_size": config.vocab_size, "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": config.pad_vocab_size_multiple, "tie_embeddings": config.tie_embeddings}


def save(model: LanguageModel, directory: Path, dtypes=None) -> None:
    """Write ``config.json`` + ``pytorch_model.bin`` (what mamba_ssm's ``from_pretrained`` reads), and the
    special token ids, if recorded, in ``generation_config.json``.

    mamba_ssm loads with ``strict=True``, so a tied ``lm_head.weight`` is written too.
    """
    config = from_lrnn_config(model)
    state: State = mamba_peer_state(model, KEYMAP, dtypes)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    write_pickle(directory, state)
    save_special_tokens(directory, model.special_tokens)
    write_config(directory, config)
