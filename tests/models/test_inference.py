"""Inference weight formats (lrnn.models.inference): float32 layout exact, bfloat16 / int8 close, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrnn.models import (InferenceLinear, SamplingConfig, decode_weight_bytes, generate, is_prepared,
                         prepare_for_inference)
from lrnn.models.inference import _int8_matmul, quantize_int8
from lrnn.testing import relative_error

from model_testkit import ALL_MIXERS, F32, build_model, random_ids, tiny_config


def _prepared(mixer: str, weights: str, **config):
    base = build_model(tiny_config(mixer, **config), dtype=F32)
    other = build_model(tiny_config(mixer, **config), dtype=F32)
    return base, prepare_for_inference(other, weights)


@pytest.mark.parametrize("mixer", ALL_MIXERS)
def test_float32_layout_equals_the_model_sequence_and_decode(mixer):
    base, fast = _prepared(mixer, "float32")
    assert not any(isinstance(m, nn.Linear) for m in fast.modules())
    ids = random_ids(2, 11)
    with torch.no_grad():
        assert relative_error(fast(ids), base(ids)) < 1e-5
        caches = base.new_cache(), fast.new_cache()
        base(ids[:, :7], cache=caches[0]), fast(ids[:, :7], cache=caches[1])
        for t in range(7, 11):  # cached single-token steps
            step = ids[:, t:t + 1]
            assert relative_error(fast(step, cache=caches[1]), base(step, cache=caches[0])) < 1e-5


@pytest.mark.parametrize("weights, tolerance", [("bfloat16", 3e-2), ("int8", 6e-2)])
@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet", "attention"])
def test_reduced_formats_are_close_but_not_equal(mixer, weights, tolerance):
    base, fast = _prepared(mixer, weights)
    ids = random_ids(1, 9)
    with torch.no_grad():
        error = relative_error(fast(ids), base(ids))
    assert 0 < error < tolerance  # a reduced format changes the logits, a little


def test_linear_formats_match_their_definitions():
    torch.manual_seed(0)
    linear = nn.Linear(24, 10)
    x = torch.randn(3, 5, 24)
    with torch.no_grad():
        expected = linear(x)
        assert relative_error(InferenceLinear(linear, "float32")(x), expected) < 1e-6
        bf16 = F.linear(x.bfloat16(), linear.weight.bfloat16()).float() + linear.bias
        assert relative_error(InferenceLinear(linear, "bfloat16")(x), bf16) < 1e-2
        one_row = x[:1, :1]  # the matrix-vector branch
        assert relative_error(InferenceLinear(linear, "bfloat16")(one_row), bf16[:1, :1]) < 1e-2
        q, scale = quantize_int8(linear.weight)
        dequantised = F.linear(x, q.float() * scale[:, None], linear.bias)
        assert relative_error(InferenceLinear(linear, "int8")(x), dequantised) < 1e-2
        assert InferenceLinear(linear, "int8")(x).dtype == torch.float32


def test_int8_quantisation_error_is_half_a_step_and_zero_rows_are_safe():
    torch.manual_seed(1)
    weight = torch.randn(6, 32)
    weight[2] = 0
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    assert scale[2] == 1 and (q[2] == 0).all()
    assert (q.abs().amax(1)[[0, 1, 3, 4, 5]] == 127).all()  # the largest entry of a row uses the full range


@pytest.mark.parametrize("out_features, in_features", [(12, 40), (10, 24), (12, 48), (7, 128), (33, 64)])
def test_int8_product_equals_the_dequantised_product(out_features, in_features):
    # widths that are not multiples of 16 take the fallback (torch's kernel is wrong there), the others the kernel
    torch.manual_seed(2)
    q, scale = quantize_int8(torch.randn(out_features, in_features))
    for rows in (torch.randn(4, in_features).bfloat16(), torch.randn(1, in_features).bfloat16()):
        reference = rows.float() @ (q.float() * scale[:, None]).t()
        assert relative_error(_int8_matmul(rows, q, scale.bfloat16()).float(), reference) < 1e-2


def test_weight_bytes_shrink_with_the_format():
    base, fast = _prepared("mamba2", "int8")
    _, half = _prepared("mamba2", "bfloat16")
    embedding = base.embedding.weight
    matrices = sum(m.weight.numel() for m in base.modules() if isinstance(m, nn.Linear))
    rest = sum(p.numel() for name, p in base.named_parameters()
               if not name.startswith("embedding") and not any(name == n + ".weight" or name == n + ".bias"
                                                               for n, m in base.named_modules()
                                                               if isinstance(m, nn.Linear)))
    assert decode_weight_bytes(base) == 4 * (matrices + rest)  # the tied head counts, the table does not
    assert decode_weight_bytes(half) == 2 * matrices + 4 * rest
    rows = sum(m.weight.shape[0] for m in base.modules() if isinstance(m, nn.Linear))
    assert decode_weight_bytes(fast) == matrices + 2 * rows + 4 * rest  # int8 weights, a bfloat16 scale per row
    assert embedding.numel() > 0


def test_prepared_model_generates_and_refuses_saving_and_preparing_again(tmp_path):
    _, fast = _prepared("deltanet", "int8")
    assert is_prepared(fast)
    out = generate(fast, random_ids(1, 5), sampling=SamplingConfig(max_new_tokens=6))
    assert out.shape == (1, 11)
    with pytest.raises(ValueError, match="save the original"):
        fast.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="already prepared"):
        prepare_for_inference(fast, "float32")


def test_bad_arguments():
    model = build_model(tiny_config("mamba2"), dtype=F32)
    with pytest.raises(ValueError, match="weights must be one of"):
        prepare_for_inference(model, "int4")
    with pytest.raises(ValueError, match="expects float32 weights"):
        prepare_for_inference(build_model(tiny_config("mamba2")), "bfloat16")  # float64 model
    with pytest.raises(TypeError, match="nn.Linear"):
        InferenceLinear(nn.Conv1d(2, 2, 1), "float32")
    with pytest.raises(TypeError, match="nn.Module"):
        prepare_for_inference("model", "float32")


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_compiled_decode_step_equals_eager(weights):
    """The formats compile (fullgraph; int8's kernel once failed to lower with its scale cast inside the graph)."""
    _, fast = _prepared("mamba2", weights)
    compiled = torch.compile(fast, fullgraph=True, backend="inductor")
    ids = random_ids(1, 6)
    with torch.no_grad():
        caches = fast.new_cache(), fast.new_cache()
        fast(ids[:, :4], cache=caches[0]), fast(ids[:, :4], cache=caches[1])
        for t in range(4, 6):
            step = ids[:, t:t + 1]
            assert relative_error(compiled(step, cache=caches[1]), fast(step, cache=caches[0])) < 1e-5
