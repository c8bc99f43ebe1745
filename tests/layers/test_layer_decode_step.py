"""The decode step: one token after a cached state runs the single-token ops (``decay_step`` in Mamba and
Mamba-2, ``delta_step`` in DeltaNet / Gated DeltaNet / DeltaProduct) and computes what the chunked path
computes for that token, for every such variant and both eigenvalue ranges: outputs and updated states.
Also the one rule that picks the mode (``scan_mode``) and which op each mode calls."""

from __future__ import annotations

import pytest
import torch

import lrnn.layers.deltanet as deltanet_module
import lrnn.layers.mamba as mamba_module
from lrnn.layers.common import scan_mode

from layer_testkit import (F32, F64, MIXER_VARIANTS, TOL, assert_close, assert_states_close, build_variant,
                           random_hidden, single_threaded)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

STEP_OPS = {"mamba": mamba_module, "mamba2": mamba_module, "deltanet": deltanet_module,
            "gated_deltanet": deltanet_module, "deltaproduct": deltanet_module}
VARIANTS = [v for v, (name, _) in MIXER_VARIANTS.items() if name in STEP_OPS]


@torch.no_grad()
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_step_equals_the_chunked_path(variant, negative, dtype):
    """Tokens 9..11 after a 9-token prefill: the step (with and without an all-ones mask) vs the chunked
    path forced with ``mode="chunk"`` from the same state."""
    layer = build_variant(variant, negative, dtype)
    x = random_hidden(3, 12, dtype, seed=5)
    step: dict = {}
    chunk: dict = {}
    layer(x[:, :9], step)
    layer(x[:, :9], chunk)
    ones = torch.ones(3, 1, dtype=torch.bool)
    for i in range(9, 12):
        token = x[:, i:i + 1]
        out_step = layer(token, step, ones if i == 10 else None)
        out_chunk = layer(token, chunk, mode="chunk")
        assert out_step.shape == token.shape and out_step.dtype == dtype
        assert_close(out_step, out_chunk, TOL[dtype], f"{variant}: decode step vs chunked path, token {i}")
        assert_states_close(step, chunk, TOL[dtype], f"{variant}: state after token {i}")
        assert step["ssm"].dtype == chunk["ssm"].dtype


@pytest.mark.parametrize("variant", ["mamba", "mamba2", "deltaproduct-nh2-gated"])
def test_each_mode_calls_its_op(variant, monkeypatch):
    """A cached single token runs the step op (default mode, forced "recurrent", with a mask); no state,
    longer inputs or a forced "chunk" run the sequence op in the mode ``scan_mode`` picks."""
    module = STEP_OPS[MIXER_VARIANTS[variant][0]]
    step_name, sequence_name = (("decay_step", "decay_recurrence") if module is mamba_module
                                else ("delta_step", "delta_rule"))
    calls = []
    for name in (step_name, sequence_name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **kw:
                            calls.append(kw.get("mode", "step")) or _real(*a, **kw))
    if variant == "mamba":  # Mamba's recurrent mode runs selective_scan (the scan as one autograd function)
        real_scan = module.selective_scan
        monkeypatch.setattr(module, "selective_scan", lambda *a, **kw: calls.append("recurrent") or real_scan(*a, **kw))
    layer = build_variant(variant, True, F64)
    x = random_hidden(2, 6, F64)
    default_mode = "recurrent" if variant == "mamba" else "chunk"  # Mamba scans step by step on CPU
    with torch.no_grad():
        state: dict = {}
        layer(x[:, :1], mode="recurrent")  # no cache at all
        layer(x[:, :1], state)  # no state yet: a one-token prefill
        layer(x[:, 1:2], state)
        layer(x[:, 2:3], state, mode="recurrent")
        layer(x[:, 3:4], state, torch.ones(2, 1, dtype=torch.bool))
        layer(x[:, 4:5], state, mode="chunk")
        layer(x[:, 4:6], state)
    assert calls == ["recurrent", default_mode, "step", "step", "step", "chunk", default_mode]


def test_scan_mode_rule():
    one, many = torch.zeros(2, 1, 4), torch.zeros(2, 3, 4)
    cached, empty = {"ssm": torch.zeros(1)}, {}
    assert scan_mode(one, cached) == "step"
    assert scan_mode(one, cached, "recurrent") == "step"
    assert scan_mode(one, cached, "chunk") == "chunk"
    assert scan_mode(one, empty) == "chunk"
    assert scan_mode(one, None, "recurrent") == "recurrent"
    assert scan_mode(one, {"conv": torch.zeros(1)}) == "chunk"  # the state's key is "ssm"
    assert scan_mode(one, {"h": torch.zeros(1)}, key="h") == "step"
    assert scan_mode(many, cached) == "chunk"
    assert scan_mode(many, cached, "recurrent") == "recurrent"
    assert scan_mode(many, None, scan_on_cpu=True) == "recurrent"
    assert scan_mode(many, None, "chunk", scan_on_cpu=True) == "chunk"
    for bad in ("step", "Chunk", "parallel", 1):
        with pytest.raises(ValueError, match="mode"):
            scan_mode(many, None, bad)


@torch.no_grad()
@pytest.mark.parametrize("variant", ["mamba", "mamba2", "deltanet"])
def test_a_step_from_a_seeded_ssm_state_without_conv_history(variant):
    """A state holding only "ssm" (a caller seeding the recurrence) decodes as the chunked path does, the
    conv starting from zeros."""
    layer = build_variant(variant, True, F64)
    x = random_hidden(2, 1, F64, seed=6)
    prefill: dict = {}
    layer(random_hidden(2, 5, F64, seed=7), prefill)
    step, chunk = {"ssm": prefill["ssm"].clone()}, {"ssm": prefill["ssm"].clone()}
    assert_close(layer(x, step), layer(x, chunk, mode="chunk"), TOL[F64], f"{variant}: seeded step")
    assert_states_close(step, chunk, TOL[F64], f"{variant}: seeded state")
