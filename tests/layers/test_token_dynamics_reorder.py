"""Refinement 2 of arXiv 2410.03292 (``lrnn.layers.reorder``, Mamba's ``reorder_tau``): SoftSort is the sort's
permutation matrix as tau -> 0 and differentiable for tau > 0; the reordered Mamba equals a plain Mamba run on
the hard-sorted sequence (then un-sorted) at small tau, passes gradients to the importance vector, and refuses
the causal uses (cache, mask, packed documents)."""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import Mamba
from lrnn.layers.reorder import ImportanceReorder, soft_sort
from lrnn.models import LanguageModel, ModelConfig
from lrnn.models.interop import save_model

from layer_testkit import F64, assert_close, random_hidden

D_MODEL = 16


def test_soft_sort_tends_to_the_ascending_permutation_matrix():
    """Distinct scores: at tau = 1e-4 P is the 0/1 matrix with P[k, argsort(s)[k]] = 1 (to 1e-12), P s is the
    sorted scores; at tau = 1 the rows are stochastic but not 0/1."""
    scores = torch.randn(3, 9, generator=torch.Generator().manual_seed(0), dtype=F64)
    hard = torch.nn.functional.one_hot(scores.argsort(dim=-1), 9).to(F64)  # [3, 9, 9]
    assert_close(soft_sort(scores, 1e-4), hard, 1e-12, "tau -> 0")
    assert torch.allclose(soft_sort(scores, 1e-4) @ scores.unsqueeze(-1), scores.sort().values.unsqueeze(-1))
    soft = soft_sort(scores, 1.0)
    assert torch.allclose(soft.sum(-1), torch.ones(3, 9, dtype=F64)) and (soft < 0.99).all()


def test_gradients_flow_to_the_scores_and_the_importance_vector():
    """d/ds of a loss through P is finite and non-zero (gradcheck at tau = 0.7); ImportanceReorder's k gets a
    gradient from P @ v."""
    scores = torch.randn(2, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: soft_sort(s, 0.7), (scores,))
    reorder = ImportanceReorder(5, tau=0.5).double()
    dt_pre, v = torch.randn(2, 6, 5, dtype=F64), torch.randn(2, 6, 3, dtype=F64)
    (reorder.permutation(dt_pre) @ v).square().sum().backward()
    assert reorder.k.grad is not None and reorder.k.grad.abs().sum() > 0


@torch.no_grad()
@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
def test_small_tau_scans_the_hard_sorted_sequence(negative):
    """tau = 1e-6: the layer's output is that of a plain Mamba (same weights) whose conv output is sorted by
    the score s_l = k^T dt_pre_l (ascending) before x_proj and the scan, then put back at the original positions.
    A non-causal layer: changing the last token changes the first output."""
    torch.manual_seed(0)
    layer = Mamba(D_MODEL, d_state=4, negative_eigenvalues=negative, reorder_tau=1e-6).double().eval()
    layer.reorder.k.normal_()
    x = random_hidden(2, 10, F64, seed=1)
    y = layer(x, mode="chunk")

    xi, z = layer.in_proj(x).chunk(2, dim=-1)
    u = layer.conv1d(xi)  # the conv output (SiLU included): the S6 branch's input
    dt_pre = layer.dt_proj(layer.x_proj(u)[..., :layer.dt_rank])
    order = (dt_pre @ layer.reorder.k).argsort(dim=-1)  # [B, T]
    sorted_u = torch.gather(u, 1, order.unsqueeze(-1).expand_as(u))
    plain = Mamba(D_MODEL, d_state=4, negative_eigenvalues=negative).double().eval()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("reorder.")})
    dt, bmat, cmat = torch.split(plain.x_proj(sorted_u), [plain.dt_rank, plain.d_state, plain.d_state], dim=-1)
    dt = torch.nn.functional.softplus(plain.dt_proj(dt))
    a = -torch.exp(plain.A_log)
    s = torch.zeros(2, plain.d_inner, plain.d_state, dtype=F64)
    outs = []
    for t in range(10):  # the S6 recurrence written out
        decay = torch.exp(dt[:, t, :, None] * a)
        decay = 2 * decay - 1 if negative else decay
        s = decay * s + (dt[:, t] * sorted_u[:, t])[..., None] * bmat[:, t, None, :]
        outs.append((s * cmat[:, t, None, :]).sum(-1) + plain.D * sorted_u[:, t])
    y_sorted = torch.stack(outs, 1)
    y_ref = torch.empty_like(y_sorted).scatter_(1, order.unsqueeze(-1).expand_as(y_sorted), y_sorted)
    expected = plain.out_proj(y_ref * torch.nn.functional.silu(z))
    assert_close(y, expected, 1e-8, "reordered layer vs hard sort + plain scan")

    changed = x.clone()
    changed[:, -1] += 1.0
    assert (layer(changed)[:, 0] - layer(x)[:, 0]).abs().max() > 1e-6  # not causal


def test_gradients_reach_the_importance_vector_through_the_layer():
    layer = Mamba(D_MODEL, d_state=4, reorder_tau=1.0).double()
    layer(random_hidden(2, 7, F64, seed=2)).square().sum().backward()
    assert layer.reorder.k.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [dict(state={}), dict(mask=torch.ones(2, 5, dtype=torch.bool)),
                                    dict(seq_starts=torch.zeros(2, 5, dtype=torch.bool))],
                         ids=["cache", "mask", "packed"])
def test_causal_uses_are_refused(kwargs):
    layer = Mamba(D_MODEL, d_state=4, reorder_tau=1.0)
    with pytest.raises(ValueError, match="reorder_tau is not causal"):
        layer(torch.randn(2, 5, D_MODEL), **kwargs)


@pytest.mark.parametrize("tau,error", [(0.0, ValueError), (-1.0, ValueError), ("1", TypeError), (True, TypeError)])
def test_bad_temperatures_raise(tau, error):
    with pytest.raises(error, match="tau must be"):
        Mamba(D_MODEL, reorder_tau=tau)
    with pytest.raises(error, match="tau must be"):
        soft_sort(torch.zeros(3), tau)


@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf"])
def test_peer_exports_refuse_a_reordered_model(tmp_path, fmt):
    """No mamba peer reorders tokens: the export names the option instead of writing a file it cannot load."""
    model = LanguageModel(ModelConfig(vocab_size=11, d_model=D_MODEL, n_layers=1, mixer="mamba",
                                      mixer_kwargs={"mamba": {"d_state": 4, "reorder_tau": 0.5}}))
    with pytest.raises(ValueError, match=r"export to .*unsupported option reorder_tau=0.5: .*no importance reordering"):
        save_model(model, tmp_path, fmt)


def test_a_reordering_layer_has_no_tree_path():
    """forward_tree used to run the scan without the reorder: a different function from forward."""
    from lrnn.layers import Mamba
    from lrnn.ops import token_tree

    layer = Mamba(8, d_state=4, reorder_tau=1.0)
    with pytest.raises(ValueError, match="not causal"):
        layer.forward_tree(torch.randn(1, 3, 8), {}, token_tree(torch.tensor([-1, 0, 1])))
