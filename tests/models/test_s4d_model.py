"""S4D inside the LanguageModel: config handling, checkpoints, the cached state, torch.compile.

The every-mixer suites (cache agreement, generation, gradients) already run ``mixer="s4d"``.
"""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch

import lrnn.ops.hippo as hippo
from lrnn.layers import S4D
from lrnn.models import LanguageModel
from model_testkit import F32, F64, assert_close, build_model, random_ids, single_threaded, tiny_config

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LRNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hippo, "_PTD_MEMORY", {})


def test_config_builds_s4d_without_the_eigenvalue_switch():
    """``negative_eigenvalues`` is not passed to S4D (an LTI layer has no switch); asking an all-S4D model
    for [-1, 1] eigenvalues is an error, while a hybrid applies it to its recurrent layers only."""
    config = tiny_config("s4d", negative_eigenvalues=False)
    assert "negative_eigenvalues" not in config.mixer_arguments("s4d")
    model = build_model(config)
    assert all(isinstance(block.mixer, S4D) for block in model.layers)
    with pytest.raises(ValueError, match="mixer 's4d' has no eigenvalue switch"):
        tiny_config("s4d", negative_eigenvalues=True)
    hybrid = build_model(tiny_config(["s4d", "deltanet"], negative_eigenvalues=True))
    assert hybrid.layers[1].mixer.negative_eigenvalues and isinstance(hybrid.layers[0].mixer, S4D)


@pytest.mark.parametrize("kwargs", [dict(d_state=16, init="ptd", discretization="bilinear"),
                                    dict(d_state=8, init="inv", bidirectional=True)],
                         ids=["ptd-bilinear", "inv-bidirectional"])
def test_checkpoint_round_trip(tmp_path, kwargs):
    """save_pretrained / from_pretrained reproduce the outputs bit for bit (PTD init: the reloaded model
    rebuilds its init, then loads the trained values over it)."""
    config = tiny_config("s4d", mixer_kwargs={"s4d": kwargs})
    model = build_model(config, F32, embedding_std=0.02)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = LanguageModel.from_pretrained(tmp_path / "ckpt").eval()
    ids = random_ids(2, 13)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_cached_state_saves_as_safetensors_and_continues(tmp_path):
    """The S4D cache entries are real tensors: they save and load with safetensors, and continuing from
    the reloaded states equals continuing from the originals."""
    model = build_model(tiny_config("s4d"), F64)
    ids, tail = random_ids(2, 9), random_ids(2, 5, seed=7)
    with torch.no_grad():
        cache = model.new_cache()
        model(ids, cache=cache)
        flat = {f"{i}.{k}": v.contiguous() for i, layer in enumerate(cache.layers) for k, v in layer.items()}
        assert all(not v.is_complex() for v in flat.values())
        safetensors.torch.save_file(flat, str(tmp_path / "cache.safetensors"))
        back = safetensors.torch.load_file(str(tmp_path / "cache.safetensors"))
        restored = model.new_cache()
        for key, value in back.items():
            layer, name = key.split(".", 1)
            restored.layers[int(layer)][name] = value
        assert_close(model(tail, cache=restored), model(tail, cache=cache), 0.0, "restored cache")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex:UserWarning")
@pytest.mark.skipif(not os.environ.get("LRNN_SLOW_TESTS"), reason="compiling takes 20-45 s; set LRNN_SLOW_TESTS=1")
@torch.no_grad()
def test_compiled_s4d_model_matches_eager():
    """torch.compile(fullgraph=True) of an S4D model: the FFT forward and a cached decode step equal eager
    within 1e-5 (inductor falls back to eager kernels for the complex ops, with a warning)."""
    torch._dynamo.reset()
    model = build_model(tiny_config("s4d", d_intermediate=0), F32, embedding_std=0.02)
    compiled = torch.compile(model, fullgraph=True)
    ids = random_ids(2, 8, seed=30)
    assert (compiled(ids) - model(ids)).abs().max().item() <= 1e-5
    eager_cache, compiled_cache = model.new_cache(), model.new_cache()
    model(ids, cache=eager_cache)
    model(ids, cache=compiled_cache)
    token = random_ids(2, 1, seed=31)
    assert (compiled(token, cache=compiled_cache) - model(token, cache=eager_cache)).abs().max().item() <= 1e-5
