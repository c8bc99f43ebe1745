"""The eigenvalue switch really changes the recurrence.

With ``negative_eigenvalues=True`` the Mamba / Mamba-2 decays are ``2 exp(dt A) - 1`` (negative once
``exp(dt A) < 1/2``) and the DeltaNet-family betas are ``2 sigmoid(W_b x)`` (above 1 somewhere, i.e. an
eigenvalue ``1 - beta`` below 0). The tests spy on the arguments each layer hands to its op, recompute
them from the layer's own parameters, and check the two ranges give different outputs for one set of
weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lrnn.layers.deltanet as deltanet_module
import lrnn.layers.mamba as mamba_module
from layer_testkit import F64, MIXER_VARIANTS, build_mixer, build_variant, random_hidden, rel_err, single_threaded
from lrnn.layers import RECURRENT_MIXERS

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


def spy(monkeypatch, module, op_name: str) -> list[dict]:
    """Record the keyword view of every call a layer module makes to one of its ops."""
    calls: list[dict] = []
    original = getattr(module, op_name)
    names = ("q", "k", "v") + (("beta",) if op_name == "delta_rule" else ()) + ("log_decay", "decay_negative")

    def recording(*args, **kwargs):
        calls.append({**dict(zip(names, args)), **kwargs})
        return original(*args, **kwargs)

    monkeypatch.setattr(module, op_name, recording)
    return calls


def signed_decays(call: dict) -> torch.Tensor:
    """The decay values ``sign * exp(log|a|)`` a layer passed to its op."""
    a = torch.exp(call["log_decay"])
    negative = call.get("decay_negative")
    return a if negative is None else torch.where(negative, -a, a)


@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
def test_mamba2_decays_are_2a_minus_1_and_reach_below_zero(monkeypatch, negative):
    """Mamba-2 passes decays ``exp(dt A)`` ([0, 1]) or ``2 exp(dt A) - 1`` ([-1, 1]) to its scan; a large
    dt_bias (exp(dt A) near 0) makes the [-1, 1] decays near -1, a very negative one keeps them near 1;
    the [0, 1] decays are never negative."""
    layer = build_mixer("mamba2", dict(d_state=8, headdim=8, chunk_size=8), negative)
    with torch.no_grad():
        layer.dt_bias[:2].fill_(4.0)  # heads 0, 1: dt ~ 4, exp(dt A) <= exp(-4)
        layer.dt_bias[2:].fill_(-6.0)  # heads 2, 3: dt ~ 0.003, exp(dt A) near 1
    x = random_hidden(2, 11)
    calls = spy(monkeypatch, mamba_module, "decay_recurrence")
    with torch.no_grad():
        layer(x)
        dt_raw = layer.in_proj(x)[..., -layer.nheads:]
        a = torch.exp(F.softplus(dt_raw + layer.dt_bias) * -torch.exp(layer.A_log))  # [B, T, H]
    assert len(calls) == 1
    decays = signed_decays(calls[0])
    expected = 2 * a - 1 if negative else a
    assert rel_err(decays, expected) < 1e-12
    if negative:
        assert (decays[..., :2] < -0.9).all(), "large dt with negative eigenvalues should give decays near -1"
        assert (decays[..., 2:] > 0.5).all(), "small dt should keep 2a - 1 near 1"
    else:
        assert calls[0]["decay_negative"] is None or not calls[0]["decay_negative"].any()
        assert (decays >= 0).all()


@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
def test_mamba_decays_are_2a_minus_1_and_reach_below_zero(monkeypatch, negative):
    """Mamba (S6), per (channel, state) decay: the same map ``a -> 2a - 1``; a large dt_proj bias makes
    the [-1, 1] decays negative."""
    layer = build_mixer("mamba", dict(d_state=4, chunk_size=8), negative)
    with torch.no_grad():
        layer.dt_proj.bias.fill_(4.0)
    x = random_hidden(2, 11)
    calls = spy(monkeypatch, mamba_module, "decay_recurrence")
    with torch.no_grad():
        # The chunked path hands the decays to decay_recurrence; the CPU default (selective_scan) forms them
        # inside, and tests/layers/test_mamba_selective_scan.py holds the two paths equal.
        layer(x, mode="chunk")
        xc, _ = layer.in_proj(x).chunk(2, dim=-1)
        xc = layer.conv1d(xc)
        dt = F.softplus(layer.dt_proj(layer.x_proj(xc)[..., :layer.dt_rank]))  # [B, T, d_inner]
        a = torch.exp(dt.unsqueeze(-1) * -torch.exp(layer.A_log))  # [B, T, d_inner, N]
    decays = signed_decays(calls[0])
    expected = 2 * a - 1 if negative else a
    assert rel_err(decays, expected) < 1e-12
    assert bool((decays < 0).any()) == negative


@pytest.mark.parametrize("variant", ["deltanet", "gated_deltanet", "deltaproduct-nh3-gated"])
@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
def test_deltanet_beta_is_2_sigmoid_and_exceeds_one(monkeypatch, variant, negative):
    """DeltaNet-family betas are ``sigmoid(W_b x)`` in [0, 1] or ``2 sigmoid(W_b x)`` in [0, 2]; in the
    second range some beta exceeds 1 (a negative eigenvalue ``1 - beta`` of the Householder step)."""
    layer = build_variant(variant, negative)
    x = random_hidden(2, 11)
    calls = spy(monkeypatch, deltanet_module, "delta_rule")
    with torch.no_grad():
        layer(x)
        expected = torch.sigmoid(layer.b_proj(x)).reshape(2, 11 * layer.num_householder, layer.num_heads)
    beta = calls[0]["beta"]
    expected = 2 * expected if negative else expected
    assert rel_err(beta, expected) < 1e-12
    if negative:
        assert (beta > 1).any(), "no beta above 1: eigenvalues never negative"
        assert beta.max() <= 2
    else:
        assert beta.max() <= 1


@pytest.mark.parametrize("variant", [v for v, (name, _) in MIXER_VARIANTS.items() if name in RECURRENT_MIXERS])
def test_the_two_ranges_give_different_outputs_for_the_same_weights(variant):
    """Loading one set of weights into both ranges changes the output (the switch is not a no-op) but
    not the parameter set (the switch adds no parameters)."""
    positive = build_variant(variant, False, seed=7)
    negative = build_variant(variant, True, seed=8)
    negative.load_state_dict(positive.state_dict())  # strict: same names and shapes
    x = random_hidden(2, 17, seed=9)
    with torch.no_grad():
        difference = rel_err(negative(x), positive(x))
    assert difference > 1e-6, f"{variant}: outputs differ by only {difference:.2e} between eigenvalue ranges"
