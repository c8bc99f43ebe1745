"""The S4D mixer (``lrnn.layers.s4d``); its eigenvalue inits are tested in tests/ops/test_hippo.py.

The shared mixer suites (decode equivalence, gradients, checkpoints) run S4D through the variant tables;
this file checks what is specific to it: FFT vs recurrence for every init and discretisation, that the
layer holds its init's eigenvalues, the PTD cache location, the bidirectional mode, the optimiser groups
and the argument checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lrnn.ops.hippo as hippo
from layer_testkit import F64, assert_close, rel_err, single_threaded
from lrnn.layers import Cache, S4D, s4d_param_groups
from lrnn.ops import S4D_INITS, s4d_eigenvalues

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test starts cold: an empty PTD memory cache and a private cache directory."""
    monkeypatch.setenv("LRNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hippo, "_PTD_MEMORY", {})


def build(init="legs", disc="zoh", d_model=6, d_state=8, seed=0, **kw) -> S4D:
    """A float64 layer with dt spread over [1e-3, 1] (longer memories and fast modes alike)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = S4D(d_model, d_state, init=init, discretization=disc, **kw).to(F64).eval()
        with torch.no_grad():
            layer.log_dt.uniform_(math.log(1e-3), 0.0)
    return layer


def hidden(b, t, d=6, seed=1):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---- the two computation modes -------------------------------------------------------------------


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", S4D_INITS)
def test_fft_and_recurrence_agree_for_every_init(init, disc):
    """FFT (chunk) vs recurrent outputs, prefill + continuation and token-by-token decoding agree to
    1e-10 in float64 (batch 3, odd length 23), final states included."""
    layer = build(init, disc, d_state=16 if init == "ptd" else 8)
    x = hidden(3, 23)
    with torch.no_grad():
        full = layer(x, mode="chunk")
        assert_close(layer(x, mode="recurrent"), full, 1e-10, f"{init}/{disc}: recurrent vs FFT")
        split: dict = {}
        out = torch.cat([layer(x[:, :10], split), layer(x[:, 10:], split)], dim=1)
        assert_close(out, full, 1e-10, f"{init}/{disc}: prefill + continuation vs full")
        steps: dict = {}
        out = torch.cat([layer(x[:, i:i + 1], steps) for i in range(23)], dim=1)
        assert_close(out, full, 1e-10, f"{init}/{disc}: token by token vs full")
        assert_close(steps["ssm"], split["ssm"], 1e-10, f"{init}/{disc}: final states")
    assert split["ssm"].shape == (3, 6, layer.d_state // 2, 2) and split["ssm"].dtype == F64


def test_kernel_matches_impulse_response():
    """``layer.kernel(L)`` is the SSM's impulse response: the recurrence fed a unit impulse (before the
    D skip, GELU and GLU) returns the kernel."""
    from lrnn.ops.s4d import s4d_scan

    layer = build("lin", "bilinear")
    impulse = torch.zeros(1, 12, 6, dtype=F64)
    impulse[:, 0] = 1.0
    A, B, C, dt = layer.ssm_parameters()
    with torch.no_grad():
        y, _ = s4d_scan(impulse, A, B, C, dt, None, "bilinear", mode="recurrent")
        assert_close(layer.kernel(12), y[0].T, 1e-12, "kernel vs impulse response")


# ---- inits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", S4D_INITS)
def test_the_layer_holds_its_init_eigenvalues(init):
    """The layer's A (every channel) holds ``s4d_eigenvalues(init, N)`` (float32 parameters)."""
    N = 16
    values = s4d_eigenvalues(init, N).numpy()
    layer = S4D(4, N, init=init)
    A, _, _, _ = layer.ssm_parameters()
    np.testing.assert_allclose(A.detach().numpy(), np.tile(values, (4, 1)), rtol=1e-6, atol=1e-6)


def test_ptd_layer_uses_the_default_cache_dir_from_the_environment(tmp_path):
    """``S4D(init="ptd")`` caches under $LRNN_CACHE_DIR (set to a private directory by the fixture)."""
    layer = S4D(4, 16, init="ptd")
    assert list((tmp_path / "cache" / "ptd").glob("legs-N16-*.json"))
    A, _, _, _ = layer.ssm_parameters()
    assert (A.real < 0).all()


def test_dt_is_log_uniform_in_its_range():
    """exp(log_dt) lies in [dt_min, dt_max] and spreads over it (log scale)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = S4D(512, 4, dt_min=1e-3, dt_max=1e-1)
    dt = torch.exp(layer.log_dt.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    logs = torch.log10(dt)
    assert logs.min() < -2.8 and logs.max() > -1.2 and abs(logs.mean().item() + 2) < 0.1


# ---- bidirectional -------------------------------------------------------------------------------


def test_bidirectional_sees_the_future_and_refuses_decoding():
    """A bidirectional layer's output at t depends on inputs after t (a causal one's does not); with a
    cache, or mode='recurrent', it raises a ValueError that says why."""
    x = hidden(2, 9)
    later = x.clone()
    later[:, 6:] += 1.0
    with torch.no_grad():
        causal = build("legs")
        assert_close(causal(later)[:, :6], causal(x)[:, :6], 1e-14, "causal layer ignores the future")
        bi = build("legs", bidirectional=True)
        assert rel_err(bi(later)[:, :6], bi(x)[:, :6]) > 1e-3
        with pytest.raises(ValueError, match="bidirectional.*non-causal"):
            bi(x, {})
        with pytest.raises(ValueError, match="bidirectional"):
            bi(x, mode="recurrent")


# ---- cache, optimiser groups, arguments ---------------------------------------------------------


def test_cache_reorder_selects_rows_of_the_state():
    """Cache.reorder on the (real-stored) complex state: continuing the reordered cache equals continuing
    the selected rows' own caches."""
    layer = build("inv")
    x, tail = hidden(3, 7), hidden(3, 4, seed=2)
    with torch.no_grad():
        cache = Cache(1)
        layer(x, cache.layers[0])
        index = torch.tensor([2, 0])
        cache.reorder(index)
        out = layer(tail[index], cache.layers[0])
        for i, row in enumerate(index.tolist()):
            own: dict = {}
            layer(x[row:row + 1], own)
            assert_close(out[i:i + 1], layer(tail[row:row + 1], own), 1e-12, f"row {row}")


def test_param_groups_give_a_b_dt_their_own_lr_and_no_weight_decay():
    """A, B and dt of every S4D layer get ``ssm_lr`` and weight decay 0; matrices get ``weight_decay``;
    biases and D no decay; each parameter appears exactly once; AdamW accepts the groups."""
    model = torch.nn.Sequential(S4D(8, 4), torch.nn.LayerNorm(8), S4D(8, 4, init="lin"))
    groups = s4d_param_groups(model, lr=1e-3, ssm_lr=1e-4, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [sorted(names[id(p)] for p in g["params"]) for g in groups]
    ssm = sorted(f"{i}.{n}" for i in (0, 2) for n in ("A_imag", "A_real_log", "B", "log_dt"))
    assert by_group[0] == ssm and groups[0]["lr"] == 1e-4 and groups[0]["weight_decay"] == 0
    assert math.isclose(groups[0]["lr_scale"], 0.1) and groups[2]["lr_scale"] == 1.0
    assert groups[1]["weight_decay"] == 0 and "0.D" in by_group[1] and "1.weight" in by_group[1]
    assert by_group[2] == ["0.C", "0.output_linear.weight", "2.C", "2.output_linear.weight"]
    assert groups[2]["weight_decay"] == 0.1 and groups[2]["lr"] == 1e-3
    assert sorted(sum(by_group, [])) == sorted(names.values())
    torch.optim.AdamW(groups)
    with pytest.raises(ValueError, match="ssm_lr"):
        s4d_param_groups(model, lr=1e-3, ssm_lr=-1.0, weight_decay=0.0)


@pytest.mark.parametrize("kwargs,error,named", [
    (dict(d_state=7), ValueError, "d_state"),
    (dict(d_state=0), ValueError, "d_state"),
    (dict(d_state=8.0), TypeError, "d_state"),
    (dict(init="hippo"), ValueError, "init"),
    (dict(discretization="euler"), ValueError, "discretization"),
    (dict(dt_min=0.1, dt_max=0.01), ValueError, "dt_min"),
    (dict(bidirectional="yes"), TypeError, "bidirectional"),
    (dict(dt_min=True), TypeError, "dt_min"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(dropout="0.1"), TypeError, "dropout"),
    (dict(d_model=0), ValueError, "d_model"),
], ids=["odd-state", "zero-state", "float-state", "init", "discretization", "dt-range", "dt-bool", "bidirectional",
        "dropout", "dropout-str", "d_model"])
def test_bad_arguments_raise_clear_errors(kwargs, error, named):
    args = dict(d_model=8, d_state=8)
    args.update(kwargs)
    with pytest.raises(error, match=named):
        S4D(**args)
