"""What refinement 1 (Mamba's ``token_dynamics``) guarantees in the token system, in both eigenvalue ranges
(docs/token_dynamics.md section 5), checked on the system built from real layers (``lrnn.analysis.token_system``).

* Guaranteed in both ranges: the self term of every token has the sign of D, so token 1 (self term only)
  never shrinks with "positive" and never grows with "negative", for any A, dt and P.
* Not guaranteed in [-1, 1]: a later token's cross terms carry ``prod rho_k``, negative after an odd number
  of negative decays; with collinear tokens ``x_1 = 2v``, ``x_2 = v`` and one decay rho,
  ``dx_2/dt = dt (v^T M v) (1 + 4 rho) v``: "positive" shrinks token 2 once rho < -1/4, which [0, 1] excludes.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrnn.analysis import integrate, interaction_matrix, token_system, token_velocity
from lrnn.layers import Mamba

F64 = torch.float64


def signed_layer(token_dynamics: str, negative: bool, seed: int, d_model: int = 4, d_state: int = 3) -> Mamba:
    """A token_dynamics Mamba (d_inner = 8) with random P, D, dt map and per-(channel, state) decays."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = Mamba(d_model, d_state=d_state, negative_eigenvalues=negative, token_dynamics=token_dynamics)
        with torch.no_grad():
            layer.x_proj.upper.normal_(0, 0.5)
            layer.x_proj.scale.normal_(0, 1)
            layer.x_proj.dt_weight.normal_(0, 0.5)
            layer.dt_proj.weight.normal_(0, 0.5)
            layer.dt_proj.bias.normal_(0, 1)
            layer.A_log.copy_(torch.randn_like(layer.A_log))  # decays of both signs in [-1, 1]
    return layer.double()


@pytest.mark.parametrize("negative", [False, True], ids=["[0,1]", "[-1,1]"])
@pytest.mark.parametrize("token_dynamics,sign", [("positive", 1.0), ("negative", -1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_one_moves_with_the_sign_of_d_in_both_ranges(token_dynamics, sign, negative, seed):
    """Along an RK4 trajectory of 6 random tokens: x_1 . dx_1/dt has the sign of D at every recorded state,
    and |x_1| is monotone (to the integrator's error), whatever the other tokens and decays do."""
    system = token_system(signed_layer(token_dynamics, negative, seed))
    x0 = torch.randn(6, system.dim, generator=torch.Generator().manual_seed(10 + seed), dtype=F64) * 0.5
    trajectory = integrate(system, x0, t_end=5.0, max_steps=400, keep_states=True)
    assert len(trajectory.times) > 10
    for state in trajectory.states:
        growth = sign * (state[0] @ token_velocity(system, state)[0]).item()
        assert growth >= -1e-12 * state[0].norm().item() ** 2
    first = trajectory.norms[:, 0]
    assert (sign * (first[1:] - first[:-1]) >= -1e-9 * first[:-1]).all()
    assert sign * (first[-1] - first[0]).item() > 0  # and it does move


def collinear_layer(token_dynamics: str, negative: bool, a: float) -> Mamba:
    """dt = 1 in every channel (dt map zero, bias softplus^-1(1)) and A = -a everywhere: one decay
    rho = exp(-a) or 2 exp(-a) - 1 for every channel and state, so collinear tokens stay collinear."""
    layer = signed_layer(token_dynamics, negative, seed=3)
    with torch.no_grad():
        layer.x_proj.dt_weight.zero_()
        layer.dt_proj.bias.fill_(math.log(math.e - 1.0))
        layer.A_log.fill_(math.log(a))
    return layer


@pytest.mark.parametrize("token_dynamics,sign", [("positive", 1.0), ("negative", -1.0)])
@pytest.mark.parametrize("negative", [False, True], ids=["[0,1]", "[-1,1]"])
def test_a_negative_decay_reverses_a_later_tokens_regime(token_dynamics, sign, negative):
    """x_1 = 2v, x_2 = v, rho = 2 e^-5 - 1 ~ -0.99 in [-1, 1] (e^-5 in [0, 1]): dx_2/dt equals the closed form
    dt (v^T M v) (1 + 4 rho) v, so token 2 moves against D's sign in [-1, 1] only. Integrated, token 1 does
    what D says in both ranges; token 2 follows D in [0, 1] throughout, and in [-1, 1] shrinks by > 5%
    ("positive", while token 1 blows up) or grows by > 5% for a while ("negative", before both decay)."""
    a = 5.0
    system = token_system(collinear_layer(token_dynamics, negative, a))
    v = torch.randn(system.dim, generator=torch.Generator().manual_seed(4), dtype=F64) * 0.3
    x0 = torch.stack([2 * v, v])
    rho = 2 * math.exp(-a) - 1 if negative else math.exp(-a)
    q = (v @ interaction_matrix(system) @ v).item()
    assert sign * q > 0
    assert torch.allclose(token_velocity(system, x0)[1], q * (1 + 4 * rho) * v, rtol=1e-12, atol=0)
    trajectory = integrate(system, x0, t_end=2.0 / abs(q) / (v @ v).item(), max_steps=2000)
    norms = trajectory.norms
    assert sign * (norms[-1, 0] - norms[0, 0]).item() > 0  # token 1: D's regime in both ranges
    change = sign * (norms[1:, 1] / norms[0, 1] - 1)  # token 2, > 0 where it moved with D's regime
    if negative:  # against D's regime by more than 5% (positive: shrinks; negative: grows for a while)
        assert change.min().item() < -0.05
    else:  # with D's regime all along
        assert change.min().item() > 0 and change.max().item() > 0.05
