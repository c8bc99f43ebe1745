"""Mamba-2's single-token decode step (``Mamba2._step``, taken for T = 1 with a cached state and no mask)
computes what the general sequence path computes for that token (taken here by passing an all-ones mask),
for every Mamba-2 variant and both eigenvalue ranges: outputs and updated states."""

from __future__ import annotations

import pytest
import torch

from layer_testkit import (F32, F64, MIXER_VARIANTS, TOL, assert_close, assert_states_close, build_variant,
                           random_hidden, single_threaded)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

VARIANTS = [v for v, (name, _) in MIXER_VARIANTS.items() if name == "mamba2"]


@torch.no_grad()
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_step_equals_the_general_path(variant, negative, dtype):
    layer = build_variant(variant, negative, dtype)
    x = random_hidden(3, 12, dtype, seed=5)
    fast: dict = {}
    general: dict = {}
    layer(x[:, :9], fast)
    layer(x[:, :9], general)
    ones = torch.ones(3, 1, dtype=torch.bool)
    for i in range(9, 12):
        token = x[:, i:i + 1]
        out_fast = layer(token, fast)
        out_general = layer(token, general, ones)
        assert out_fast.shape == token.shape and out_fast.dtype == dtype
        assert_close(out_fast, out_general, TOL[dtype], f"{variant}: fast step vs general path, token {i}")
        assert_states_close(fast, general, TOL[dtype], f"{variant}: state after token {i}")
        assert fast["ssm"].dtype == general["ssm"].dtype and fast["conv"].shape == general["conv"].shape


def test_fast_step_is_taken_for_plain_steps_only(monkeypatch):
    """Steps without a mask take the fast path; masked steps and steps without a state do not."""
    layer = build_variant("mamba2", False, F64)
    calls = []
    original = type(layer)._step
    monkeypatch.setattr(type(layer), "_step", lambda self, h, s: calls.append(1) or original(self, h, s))
    x = random_hidden(2, 4, F64)
    with torch.no_grad():
        state: dict = {}
        layer(x[:, :1], mode="recurrent")  # no cache at all: general path
        layer(x[:, :1], state)  # no state yet: general path
        layer(x[:, 1:2], state, torch.ones(2, 1, dtype=torch.bool))
        assert calls == []
        layer(x[:, 2:3], state)
        assert calls == [1]
