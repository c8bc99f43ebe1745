"""Every mixer computes the same function however the sequence is fed to it.

For each mixer variant and both eigenvalue ranges: one full forward == a cached prefill of a prefix plus a
cached forward of the rest == token-by-token decoding (T = 1 steps carrying the state); forcing
``mode="chunk"`` and ``mode="recurrent"`` agree; and left padding with a mask is a no-op. float64 is held
to 1e-10 relative error, float32 to 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from layer_testkit import (F32, F64, MIXER_VARIANTS, TOL, assert_close, assert_states_close, build_variant,
                           random_hidden, single_threaded, variant_params)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

DTYPES = pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
BATCH, TIME, SPLIT = 2, 21, 9  # with chunk_size 8: the prefill ends one token into its second chunk


@torch.no_grad()
def run_three_ways(layer: torch.nn.Module, x: torch.Tensor):
    """(full output, prefill + continuation output and state, token-by-token output and state)."""
    full = layer(x)
    split_state: dict = {}
    split = torch.cat([layer(x[:, :SPLIT], split_state), layer(x[:, SPLIT:], split_state)], dim=1)
    step_state: dict = {}
    steps = torch.cat([layer(x[:, i:i + 1], step_state) for i in range(x.shape[1])], dim=1)
    return full, (split, split_state), (steps, step_state)


@DTYPES
@pytest.mark.parametrize("variant,negative", variant_params())
def test_full_equals_prefill_plus_cached_equals_token_by_token(variant, negative, dtype):
    """A full forward, a cached prefill + continuation and T=1 cached steps give the same outputs; both
    cached runs end in the same state."""
    layer = build_variant(variant, negative, dtype)
    x = random_hidden(BATCH, TIME, dtype)
    full, (split, split_state), (steps, step_state) = run_three_ways(layer, x)
    tol = TOL[dtype]
    assert full.shape == x.shape and full.dtype == dtype
    assert_close(split, full, tol, f"{variant}: prefill {SPLIT} + cached rest vs full forward")
    assert_close(steps, full, tol, f"{variant}: token-by-token vs full forward")
    assert split_state, f"{variant}: the layer stored no state"
    assert_states_close(step_state, split_state, tol, f"{variant}: final state token-by-token vs prefill")


@DTYPES
@pytest.mark.parametrize("variant,negative", variant_params())
def test_forced_chunk_and_recurrent_modes_agree(variant, negative, dtype):
    """``mode="chunk"`` and ``mode="recurrent"`` agree on a whole sequence, without and with a carried
    state (outputs and final states)."""
    layer = build_variant(variant, negative, dtype)
    x = random_hidden(BATCH, TIME, dtype, seed=2)
    tol = TOL[dtype]
    with torch.no_grad():
        assert_close(layer(x, mode="chunk"), layer(x, mode="recurrent"), tol, f"{variant}: chunk vs recurrent")
        states = {}
        outputs = {}
        for mode in ("chunk", "recurrent"):
            state: dict = {}
            layer(x[:, :SPLIT], state)  # same (default-mode) prefill for both
            outputs[mode] = layer(x[:, SPLIT:], state, mode=mode)
            states[mode] = state
    assert_close(outputs["chunk"], outputs["recurrent"], tol, f"{variant}: chunk vs recurrent from a state")
    assert_states_close(states["chunk"], states["recurrent"], tol, f"{variant}: final state chunk vs recurrent")


@pytest.mark.parametrize("variant,negative", variant_params())
def test_left_padding_with_mask_is_a_no_op(variant, negative):
    """Left-padded rows (padding filled with random vectors, mask False) give the unpadded outputs at the
    real positions and the unpadded final state, so continuing from either state agrees. (In float64 at
    1e-10 this also needs the output norm to stay in float64: see test_layer_float64.py.)"""
    layer = build_variant(variant, negative, F64)
    x = random_hidden(2, 13, F64, seed=3)
    pad = 5
    junk = random_hidden(2, pad, F64, seed=4) * 10.0
    padded = torch.cat([junk, x], dim=1)
    mask = torch.ones(2, pad + 13, dtype=torch.bool)
    mask[:, :pad] = False
    mask[1, pad:pad + 2] = False  # row 1 is padded by two more tokens
    tail = random_hidden(2, 4, F64, seed=5)
    with torch.no_grad():
        state_padded: dict = {}
        out_padded = layer(padded, state_padded, mask=mask)
        cont_padded = layer(tail, state_padded)
        for row, start in ((0, pad), (1, pad + 2)):
            state_ref: dict = {}
            out_ref = layer(padded[row:row + 1, start:], state_ref)
            cont_ref = layer(tail[row:row + 1], state_ref)
            assert_close(out_padded[row:row + 1, start:], out_ref, TOL[F64], f"{variant}: row {row} outputs")
            assert_close(cont_padded[row:row + 1], cont_ref, TOL[F64], f"{variant}: row {row} continuation")


def test_variant_table_covers_every_mixer():
    """The variant table exercises every registered mixer (a new mixer must be added here)."""
    from lrnn.layers import MIXERS

    assert {name for name, _ in MIXER_VARIANTS.values()} == set(MIXERS)


def test_mamba_scans_step_by_step_on_cpu_by_default(monkeypatch):
    """Mamba (one value channel per head) defaults to the recurrent scan on CPU, where it is the faster
    one; an explicit mode is passed through. (Both modes agree: the chunk-vs-recurrent test above.)"""
    import lrnn.layers.mamba as mamba_module

    modes = []
    real = mamba_module.decay_recurrence

    def spy(*args, **kwargs):
        modes.append(kwargs["mode"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "decay_recurrence", spy)
    real_scan = mamba_module.selective_scan  # the recurrent scan as one autograd function

    def spy_scan(*args, **kwargs):
        modes.append("recurrent")
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "selective_scan", spy_scan)
    x = random_hidden(2, 11, F32)
    layer = mamba_module.Mamba(x.shape[-1], d_state=4, negative_eigenvalues=True)
    layer(x)
    layer(x, mode="chunk")
    assert modes == ["recurrent", "chunk"]
