"""Peer checkpoint formats: round trips, option mapping, refusals and error reporting (no peer installed).

The conformance tests against HF transformers' own Mamba / Mamba2 live in ``test_interop_hf.py``.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from lrnn.models import LanguageModel, ModelConfig
from lrnn.models.interop import FORMATS, convert, detect_format, load, save_model
from lrnn.models.interop.common import KeyMap
from model_testkit import F32, build_model, random_ids, single_threaded

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

VOCAB = 37
MAMBA2 = {"d_state": 8, "headdim": 8}
DELTA = {"num_heads": 2, "norm_eps": 1e-6}

# name -> (config, formats it exports to)
MODELS = {
    "mamba2-padded-tied": (dict(mixer="mamba2", pad_vocab_size_multiple=8, mixer_kwargs={"mamba2": MAMBA2}),
                           ("mamba_ssm", "hf")),
    "mamba2-ngroups2-untied": (dict(mixer="mamba2", tie_embeddings=False,
                                    mixer_kwargs={"mamba2": {**MAMBA2, "ngroups": 2}}), ("mamba_ssm", "hf")),
    "mamba2-all-options": (dict(mixer="mamba2", d_intermediate=128, mixer_kwargs={"mamba2": {
        **MAMBA2, "ngroups": 2, "D_has_hdim": True, "norm_before_gate": True, "dt_limit": (0.01, 0.5),
        "bias": True, "conv_bias": False}}), ("mamba_ssm",)),
    "mamba2-no-norm": (dict(mixer="mamba2", mixer_kwargs={"mamba2": {**MAMBA2, "rmsnorm": False}}), ("mamba_ssm",)),
    "mamba": (dict(mixer="mamba", mixer_kwargs={"mamba": {"d_state": 4, "dt_rank": 3}}), ("mamba_ssm", "hf")),
    "deltanet": (dict(mixer="deltanet", d_intermediate=32, norm_eps=1e-6, mixer_kwargs={"deltanet": DELTA}),
                 ("hf", "fla")),
    "deltanet-negative-gated-out": (dict(mixer="deltanet", negative_eigenvalues=True, d_intermediate=32,
                                         norm_eps=1e-6, mixer_kwargs={"deltanet": {**DELTA, "use_output_gate": True}}),
                                    ("fla",)),
    "gated_deltanet-negative": (dict(mixer="gated_deltanet", negative_eigenvalues=True, d_intermediate=32,
                                     norm_eps=1e-6, mixer_kwargs={"gated_deltanet": {**DELTA, "expand_v": 2.0}}),
                                ("fla",)),
    "deltaproduct-untied": (dict(mixer="deltaproduct", negative_eigenvalues=True, d_intermediate=32, norm_eps=1e-6,
                                 tie_embeddings=False, mixer_kwargs={"deltaproduct": {
                                     **DELTA, "num_householder": 3, "use_forget_gate": True}}), ("fla",)),
}


def make(case: str) -> LanguageModel:
    fields = dict(vocab_size=VOCAB, d_model=16, n_layers=2)
    fields.update(MODELS[case][0])
    model = build_model(ModelConfig(**fields), F32)
    with torch.no_grad():  # non-trivial values everywhere, so a mis-mapped tensor shows in the outputs
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith((".D", "bias")):
                p.add_(0.3 * torch.randn_like(p))
    return model


def outputs(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[..., :VOCAB]


@pytest.mark.parametrize("case,fmt", [(c, f) for c, (_, fmts) in MODELS.items() for f in fmts])
def test_round_trip_through_peer_format_gives_identical_outputs(tmp_path, case, fmt):
    """lrnn -> peer -> lrnn: same outputs bit for bit, and the peer checkpoint is detected as written."""
    model = make(case)
    ids = random_ids(2, 21, vocab=VOCAB)
    written = save_model(model, tmp_path / "peer", fmt)
    loaded = load(tmp_path / "peer")
    assert loaded.format == ("fla" if written == "hf (fla)" else fmt)
    assert torch.equal(outputs(loaded.model, ids), outputs(model, ids))
    if fmt == "mamba_ssm":  # every option set in lrnn comes back (dt_limit as a list, from JSON)
        expected = json.loads(json.dumps(model.config.mixer_kwargs[model.config.mixer]))
        got = loaded.model.config.mixer_kwargs[model.config.mixer]
        assert {k: (list(got[k]) if k == "dt_limit" else got[k]) for k in expected} == expected


def test_mamba_ssm_checkpoint_layout(tmp_path):
    """The mamba_ssm export has mamba_ssm's names and config keys, a padded vocabulary and lm_head stored."""
    model = make("mamba2-padded-tied")
    save_model(model, tmp_path, "mamba_ssm")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["ssm_cfg"]["layer"] == "Mamba2" and config["pad_vocab_size_multiple"] == 8
    assert config["vocab_size"] == VOCAB and config["tie_embeddings"] is True
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert state["backbone.embedding.weight"].shape == (40, 16)
    assert torch.equal(state["lm_head.weight"], state["backbone.embedding.weight"])
    for name in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "A_log", "D", "dt_bias", "norm.weight",
                 "out_proj.weight"):
        assert f"backbone.layers.1.mixer.{name}" in state
    assert "backbone.norm_f.weight" in state and "backbone.layers.0.norm.weight" in state


def test_fla_checkpoint_layout_and_mlp_split(tmp_path):
    """fla names, allow_neg_eigval, and the SwiGLU MLP split into gate/up/down projections."""
    model = make("deltaproduct-untied")
    save_model(model, tmp_path, "fla")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gated_deltaproduct" and config["allow_neg_eigval"] is True
    assert config["num_householder"] == 3 and config["use_forget_gate"] is True
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    fc1 = model.layers[0].mlp.fc1.weight
    assert torch.equal(state["model.layers.0.mlp.up_proj.weight"], fc1[:32])
    assert torch.equal(state["model.layers.0.mlp.gate_proj.weight"], fc1[32:])
    assert "model.layers.1.attn.k_conv1d.weight" in state and "lm_head.weight" in state


def test_convert_between_formats_keeps_dtype_and_outputs(tmp_path):
    """convert lrnn -> mamba_ssm -> hf -> lrnn; bfloat16 tensors stay bfloat16 through the chain."""
    model = make("mamba2-ngroups2-untied")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "a")
    reference = load(tmp_path / "a").model
    assert convert(tmp_path / "a", tmp_path / "b", "mamba_ssm") == ("lrnn", "mamba_ssm")
    assert convert(tmp_path / "b", tmp_path / "c", "hf") == ("mamba_ssm", "hf")
    assert convert(tmp_path / "c", tmp_path / "d", "lrnn", source_format="hf") == ("hf", "lrnn")
    assert detect_format(tmp_path / "d") == "lrnn"
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "c" / "model.safetensors"))["backbone.embeddings.weight"].dtype == torch.bfloat16
    ids = random_ids(2, 9, vocab=VOCAB)
    assert torch.equal(outputs(load(tmp_path / "d").model, ids), outputs(reference, ids))
    with pytest.raises(ValueError, match="--to"):
        convert(tmp_path / "a", tmp_path / "e", "onnx")
    with pytest.raises(ValueError, match="source directory"):
        convert(tmp_path / "a", tmp_path / "a", "hf")


# ---- refusals ----------------------------------------------------------------------------------
def _mamba_ssm_dir(tmp_path, case="mamba2-padded-tied"):
    save_model(make(case), tmp_path, "mamba_ssm")
    return tmp_path, json.loads((tmp_path / "config.json").read_text())


def _rewrite(directory, config):
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit,option", [
    (lambda c: c["ssm_cfg"].update(d_ssm=8), "d_ssm"),
    (lambda c: c.update(rms_norm=False), "rms_norm"),
    (lambda c: c.update(attn_layer_idx=[1]), "attn_layer_idx"),
    (lambda c: c["ssm_cfg"].update(layer="Mamba3"), "layer"),
    (lambda c: c["ssm_cfg"].update(mystery=1), "mystery"),
    (lambda c: c.update(new_top_level_option=True), "new_top_level_option"),
])
def test_mamba_ssm_unsupported_option_is_refused_by_name(tmp_path, edit, option):
    directory, config = _mamba_ssm_dir(tmp_path)
    edit(config)
    _rewrite(directory, config)
    with pytest.raises(ValueError, match=option) as err:
        load(directory)
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("edit,option", [
    (lambda c: c.update(qk_norm="sum"), "qk_norm"),
    (lambda c: c.update(qk_activation="relu"), "qk_activation"),
    (lambda c: c.update(use_beta=False), "use_beta"),
    (lambda c: c.update(attn={"layers": [1], "num_heads": 2}), "attn"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act"),
])
def test_fla_unsupported_option_is_refused_by_name(tmp_path, edit, option):
    save_model(make("deltanet"), tmp_path, "fla")
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    _rewrite(tmp_path, config)
    with pytest.raises(ValueError, match=option):
        load(tmp_path)


def test_fla_grouped_value_heads_refused(tmp_path):
    save_model(make("gated_deltanet-negative"), tmp_path, "fla")
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_v_heads"] = 4
    _rewrite(tmp_path, config)
    with pytest.raises(ValueError, match="num_v_heads"):
        load(tmp_path)


@pytest.mark.parametrize("fmt,option,fields", [
    ("hf", "negative_eigenvalues", dict(mixer="mamba2", negative_eigenvalues=True, mixer_kwargs={"mamba2": MAMBA2})),
    ("mamba_ssm", "negative_eigenvalues", dict(mixer="mamba", negative_eigenvalues=True)),
    ("hf", "D_has_hdim", dict(mixer="mamba2", mixer_kwargs={"mamba2": {**MAMBA2, "D_has_hdim": True}})),
    ("hf", "rmsnorm", dict(mixer="mamba2", mixer_kwargs={"mamba2": {**MAMBA2, "rmsnorm": False}})),
    ("hf", "norm_before_gate", dict(mixer="mamba2", mixer_kwargs={"mamba2": {**MAMBA2, "norm_before_gate": True}})),
    ("hf", "d_intermediate", dict(mixer="mamba2", d_intermediate=128, mixer_kwargs={"mamba2": MAMBA2})),
    ("mamba_ssm", "d_intermediate", dict(mixer="mamba2", d_intermediate=100, mixer_kwargs={"mamba2": MAMBA2})),
    ("mamba_ssm", "norm_eps", dict(mixer="mamba2", norm_eps=1e-6, mixer_kwargs={"mamba2": MAMBA2})),
    ("mamba_ssm", "mixer", dict(mixer="deltanet", d_intermediate=32, mixer_kwargs={"deltanet": DELTA})),
    ("fla", "mixer", dict(mixer="mamba")),
    ("fla", "d_intermediate", dict(mixer="deltanet", norm_eps=1e-6, mixer_kwargs={"deltanet": DELTA})),
    ("fla", "conv_bias", dict(mixer="deltanet", d_intermediate=32, norm_eps=1e-6,
                              mixer_kwargs={"deltanet": {**DELTA, "conv_bias": True}})),
])
def test_export_refuses_what_the_peer_cannot_express(tmp_path, fmt, option, fields):
    model = LanguageModel(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=1, **fields))
    with pytest.raises(ValueError, match=option):
        save_model(model, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_hybrid_and_classifier_export_refused(tmp_path):
    hybrid = LanguageModel(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, mixer=["mamba2", "attention"],
                                       mixer_kwargs={"mamba2": MAMBA2, "attention": {"num_heads": 2}}))
    with pytest.raises(ValueError, match="mixer"):
        save_model(hybrid, tmp_path, "mamba_ssm")
    classifier = LanguageModel(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=1, num_labels=3,
                                           mixer_kwargs={"mamba2": MAMBA2}))
    with pytest.raises(ValueError, match="num_labels"):
        save_model(classifier, tmp_path, "hf")


# ---- bad files ---------------------------------------------------------------------------------
def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path / "empty")
    directory, _ = _mamba_ssm_dir(tmp_path / "m")
    os.remove(directory / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load(directory)


def test_truncated_safetensors_names_the_file(tmp_path):
    save_model(make("mamba2-padded-tied"), tmp_path, "hf")
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load(tmp_path)
    path.write_bytes(data[:5])  # not even a header
    with pytest.raises(ValueError, match="model.safetensors"):
        load(tmp_path)


def test_truncated_or_unsafe_pickle_is_refused(tmp_path):
    directory, _ = _mamba_ssm_dir(tmp_path)
    path = directory / "pytorch_model.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load(directory)
    # A pickle that would call a function on load: weights_only=True refuses it.
    path.write_bytes(pickle.dumps({"backbone.embedding.weight": _Exploit()}, protocol=2))
    with pytest.raises(ValueError, match="weights_only"):
        load(directory)


class _Exploit:
    def __reduce__(self):
        return (os.getcwd, ())


def test_shape_mismatch_unknown_and_missing_keys_are_named(tmp_path):
    directory, config = _mamba_ssm_dir(tmp_path)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)

    config["ssm_cfg"]["d_state"] = 4  # the tensors were written for d_state 8
    _rewrite(directory, config)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*backbone\.layers\.0\.mixer\.in_proj\.weight.*shape"):
        load(directory)
    config["ssm_cfg"]["d_state"] = 8
    _rewrite(directory, config)

    torch.save({**state, "backbone.layers.0.mixer.extra": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*unknown key 'backbone\.layers\.0\.mixer\.extra'"):
        load(directory)
    state.pop("backbone.layers.1.mixer.dt_bias")
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing key 'backbone\.layers\.1\.mixer\.dt_bias'"):
        load(directory)


def test_fla_missing_mlp_half_is_named(tmp_path):
    save_model(make("deltanet"), tmp_path, "fla")
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load(tmp_path)


def test_unknown_format_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="format"):
        load(tmp_path, format="tf")
    assert set(FORMATS) == {"lrnn", "mamba_ssm", "hf", "fla"}


def test_keymap_renames_both_ways():
    keymap = KeyMap((("backbone.layers.{i}.", "layers.{i}."), ("lm_head.", "head.")))
    assert keymap.to_lrnn("backbone.layers.12.mixer.D") == "layers.12.mixer.D"
    assert keymap.to_peer("layers.3.norm.weight") == "backbone.layers.3.norm.weight"
    assert keymap.to_lrnn("model.embed") is None and keymap.to_peer("head.weight") == "lm_head.weight"


# ---- mamba_ssm semantics, independently -------------------------------------------------------------
def _rms(x, w, eps=1e-5, groups=1):
    shape = x.shape
    x = x.reshape(*shape[:-1], groups, -1)
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).reshape(shape) * w


def _mamba_ssm_mamba2_reference(state, config, ids):
    """mamba_ssm's MambaLMHeadModel with Mamba2 mixers, written from its documented math as a plain
    sequential loop over the *peer's* tensor names and config (float64): an independent check that the
    option mapping (D per channel, norm placement, no norm, dt_limit, groups, biases, MLP) is right."""
    ssm = config["ssm_cfg"]
    d_model, n_state, p, g = config["d_model"], ssm["d_state"], ssm["headdim"], ssm["ngroups"]
    d_inner = ssm["expand"] * d_model
    h_count = d_inner // p
    st = {k: v.double() for k, v in state.items()}
    x = st["backbone.embedding.weight"][ids]  # [B, T, D]
    silu = torch.nn.functional.silu
    for i in range(config["n_layer"]):
        pre = f"backbone.layers.{i}."
        u = _rms(x, st[pre + "norm.weight"])
        zxbcdt = u @ st[pre + "mixer.in_proj.weight"].T + st.get(pre + "mixer.in_proj.bias", 0)
        z, xbc, dt = zxbcdt.split([d_inner, d_inner + 2 * g * n_state, h_count], dim=-1)
        w = st[pre + "mixer.conv1d.weight"][:, 0]  # [C, W]
        padded = torch.nn.functional.pad(xbc, (0, 0, w.shape[1] - 1, 0))
        conv = sum(padded[:, k:k + xbc.shape[1]] * w[:, k] for k in range(w.shape[1]))
        xbc = silu(conv + st.get(pre + "mixer.conv1d.bias", 0))
        xs, bm, cm = xbc.split([d_inner, g * n_state, g * n_state], dim=-1)
        dt = torch.nn.functional.softplus(dt + st[pre + "mixer.dt_bias"]).clamp(*ssm["dt_limit"])
        a = -torch.exp(st[pre + "mixer.A_log"])
        b_, t_ = ids.shape
        xs = xs.reshape(b_, t_, h_count, p)
        bm = bm.reshape(b_, t_, g, n_state).repeat_interleave(h_count // g, dim=2)
        cm = cm.reshape(b_, t_, g, n_state).repeat_interleave(h_count // g, dim=2)
        d = st[pre + "mixer.D"].reshape(h_count, p) if ssm["D_has_hdim"] else st[pre + "mixer.D"][:, None]
        hstate = torch.zeros(b_, h_count, p, n_state, dtype=torch.float64)
        ys = []
        for t in range(t_):
            decay = torch.exp(dt[:, t] * a)[:, :, None, None]
            hstate = hstate * decay + (dt[:, t, :, None] * xs[:, t])[..., None] * bm[:, t, :, None, :]
            ys.append((hstate * cm[:, t, :, None, :]).sum(-1) + d * xs[:, t])
        y = torch.stack(ys, 1).reshape(b_, t_, d_inner)
        if not ssm["rmsnorm"]:
            y = y * silu(z)
        elif ssm["norm_before_gate"]:
            y = _rms(y, st[pre + "mixer.norm.weight"], groups=g) * silu(z)
        else:
            y = _rms(y * silu(z), st[pre + "mixer.norm.weight"], groups=g)
        x = x + y @ st[pre + "mixer.out_proj.weight"].T + st.get(pre + "mixer.out_proj.bias", 0)
        if config["d_intermediate"]:
            hidden, gate = (_rms(x, st[pre + "norm2.weight"]) @ st[pre + "mlp.fc1.weight"].T).chunk(2, dim=-1)
            x = x + (hidden * silu(gate)) @ st[pre + "mlp.fc2.weight"].T
    return _rms(x, st["backbone.norm_f.weight"]) @ st["lm_head.weight"].T


@pytest.mark.parametrize("case", ["mamba2-padded-tied", "mamba2-ngroups2-untied", "mamba2-all-options",
                                  "mamba2-no-norm"])
def test_mamba_ssm_import_matches_mamba_ssm_semantics(tmp_path, case):
    """Importing a mamba_ssm checkpoint computes what mamba_ssm's math computes on the same tensors."""
    save_model(make(case), tmp_path, "mamba_ssm")
    config = json.loads((tmp_path / "config.json").read_text())
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    ids = random_ids(2, 13, vocab=VOCAB)
    expected = _mamba_ssm_mamba2_reference(state, config, ids)[..., :VOCAB]
    model = load(tmp_path).model.double()
    with torch.no_grad():
        got = model(ids)
    assert (got - expected).abs().max().item() <= 1e-8 * max(1.0, expected.abs().max().item())


def test_sharded_safetensors_checkpoint_loads(tmp_path):
    """HF's sharded layout (model.safetensors.index.json + shards) loads; a missing shard is named."""
    from safetensors.torch import load_file, save_file

    model = make("mamba2-ngroups2-untied")
    save_model(model, tmp_path, "hf")
    state = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = random_ids(2, 9, vocab=VOCAB)
    assert torch.equal(outputs(load(tmp_path).model, ids), outputs(model, ids))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load(tmp_path)


# ---- dtypes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["lrnn", "mamba_ssm", "hf"])
def test_load_keeps_the_stored_dtype_unless_asked(tmp_path, fmt):
    """A float64 checkpoint of any format loads as float64, bit for bit; ``dtype=`` converts."""
    model = make("mamba2-ngroups2-untied").double()
    save_model(model, tmp_path, fmt)
    loaded = load(tmp_path).model
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == torch.float64 and torch.equal(loaded.state_dict()[name], tensor), name
    for dtype in (torch.float32, torch.bfloat16):
        assert {t.dtype for t in load(tmp_path, dtype=dtype).model.state_dict().values()} == {dtype}
    with pytest.raises(TypeError, match="dtype"):
        load(tmp_path, dtype="float16")


# ---- import -> export -> import keeps every field the importer reads --------------------------------------
class RecordingDict(dict):
    """A config dict that records the key paths an importer reads (``get``, ``[]``, ``in``); nested dicts
    (mamba_ssm's ``ssm_cfg``) record under ``outer.inner``."""

    def __init__(self, data, reads: set, prefix: str = "") -> None:
        super().__init__(data)
        self.reads, self.prefix = reads, prefix

    def _seen(self, key, value):
        self.reads.add(self.prefix + key)
        return RecordingDict(value, self.reads, f"{self.prefix}{key}.") if isinstance(value, dict) else value

    def get(self, key, default=None):
        return self._seen(key, super().get(key, default))

    def __getitem__(self, key):
        return self._seen(key, super().__getitem__(key))

    def __contains__(self, key):
        self.reads.add(self.prefix + key)
        return super().__contains__(key)


def _at(config: dict, path: str):
    for key in path.split("."):
        config = config.get(key, "<absent>") if isinstance(config, dict) else "<absent>"
    return config


TOKENS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}  # HF's defaults are 0 / 2 / 1
FLA_COMMON = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_heads=2, norm_eps=1e-5,
                  intermediate_size=32, hidden_act="swish", attn=None, conv_bias=False, **TOKENS)
# Peer configs with a non-default value for every option each importer maps.
PEER_CONFIGS = {
    "hf-mamba2": ("hf", {"model_type": "mamba2", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 2,
                         "state_size": 8, "expand": 2, "conv_kernel": 3, "n_groups": 2, "num_heads": 4, "head_dim": 8,
                         "use_bias": True, "use_conv_bias": False, "time_step_limit": [0.01, 0.5],
                         "layer_norm_epsilon": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
                         "chunk_size": 32, **TOKENS}),
    "hf-mamba": ("hf", {"model_type": "mamba", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 2,
                        "state_size": 4, "expand": 2, "conv_kernel": 3, "time_step_rank": 3, "use_bias": True,
                        "use_conv_bias": False, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
                        "hidden_act": "silu", **TOKENS, "eos_token_id": [0, 5]}),
    "mamba_ssm-mamba2": ("mamba_ssm", {"d_model": 16, "d_intermediate": 128, "n_layer": 2, "vocab_size": VOCAB,
                                       "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "d_conv": 3, "expand": 2,
                                                   "headdim": 8, "ngroups": 2, "D_has_hdim": True, "rmsnorm": True,
                                                   "norm_before_gate": True, "dt_limit": [0.01, 0.5], "bias": True,
                                                   "conv_bias": False, "chunk_size": 32},
                                       "attn_layer_idx": [], "rms_norm": True, "pad_vocab_size_multiple": 8,
                                       "tie_embeddings": False}),
    "mamba_ssm-mamba1": ("mamba_ssm", {"d_model": 16, "d_intermediate": 0, "n_layer": 2, "vocab_size": VOCAB,
                                       "ssm_cfg": {"layer": "Mamba1", "d_state": 4, "d_conv": 3, "expand": 2,
                                                   "dt_rank": 3, "bias": True, "conv_bias": False},
                                       "rms_norm": True, "pad_vocab_size_multiple": 1, "tie_embeddings": True}),
    "fla-delta_net": ("fla", {"model_type": "delta_net", **FLA_COMMON, "expand_k": 1.0, "expand_v": 2.0,
                              "use_short_conv": True, "conv_size": 3, "use_gate": True, "use_beta": True,
                              "use_output_norm": True, "qk_norm": "l2", "qk_activation": "silu",
                              "tie_word_embeddings": True, "allow_neg_eigval": False}),
    "fla-gated_deltanet": ("fla", {"model_type": "gated_deltanet", **FLA_COMMON, "head_dim": 8, "expand_v": 2.0,
                                   "use_short_conv": False, "use_gate": False, "tie_word_embeddings": False,
                                   "allow_neg_eigval": True}),
    "fla-gated_deltaproduct": ("fla", {"model_type": "gated_deltaproduct", **FLA_COMMON, "head_dim": 8,
                                       "expand_v": 1.0, "use_short_conv": True, "conv_size": 2,
                                       "num_householder": 2, "use_forget_gate": True, "use_output_gate": False,
                                       "tie_word_embeddings": True, "allow_neg_eigval": True}),
}


def _importer(fmt: str, config: dict):
    from lrnn.models.interop import fla, hf, mamba_ssm

    return {"hf": hf, "fla": fla, "mamba_ssm": mamba_ssm}[fmt]


def _write_peer_checkpoint(directory, fmt: str, config: dict) -> None:
    """``config`` as config.json with random weights of the matching shapes (mamba_ssm: the token ids in
    generation_config.json, its config has no keys for them)."""
    module = _importer(fmt, config)
    torch.manual_seed(0)
    module.save(LanguageModel(module.to_lrnn_config(config, "test")), directory)
    (directory / "config.json").write_text(json.dumps(config))
    if fmt == "mamba_ssm":
        (directory / "generation_config.json").write_text(json.dumps(TOKENS))


@pytest.mark.parametrize("case", list(PEER_CONFIGS))
def test_export_carries_every_field_the_importer_reads(tmp_path, case):
    """peer -> lrnn -> peer -> lrnn: the second import equals the first (config, token ids, outputs), and
    every key the importer read from the original config.json has the same value in the exported one
    (export used to hard-code chunk_size 256 and drop the token ids: eos/pad/bos 0/0/0 came back 2/1/0)."""
    from lrnn.models import SpecialTokens
    fmt, original = PEER_CONFIGS[case]
    _write_peer_checkpoint(tmp_path / "a", fmt, original)
    first = load(tmp_path / "a")
    expected_tokens = SpecialTokens.from_dict(original if fmt != "mamba_ssm" else TOKENS, "test")
    assert first.model.special_tokens == expected_tokens
    save_model(first.model, tmp_path / "b", fmt)
    second = load(tmp_path / "b")
    assert second.model.config == first.model.config
    assert second.model.special_tokens == expected_tokens
    ids = random_ids(2, 9, vocab=VOCAB)
    assert torch.equal(outputs(second.model, ids), outputs(first.model, ids))

    reads: set[str] = set()
    module = _importer(fmt, original)
    module.to_lrnn_config(RecordingDict(original, reads), "test")
    module.special_tokens(RecordingDict(original, reads), tmp_path / "a")
    exported = json.loads((tmp_path / "b" / "config.json").read_text())
    read_present = sorted(path for path in reads if _at(original, path) != "<absent>")
    assert {p: _at(exported, p) for p in read_present} == {p: _at(original, p) for p in read_present}
    assert len(read_present) >= 10  # the recording saw the importer's reads
