"""The token-dynamics diagnosis (lrnn.analysis, docs/token_dynamics.md): the system against its derivation, the
integrator against closed forms and scipy, the regimes on constructed parameters, and the spectra of a model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrnn.analysis import (TokenSystem, analyze_model, integrate, interaction_matrix, mamba_layers, rk4, spectrum,
                           token_system, token_velocity, x_proj_inputs)
from lrnn.models import LanguageModel, ModelConfig

F64 = torch.float64
LN2 = math.log(2.0)


def scalar_system(mu: float, a: float = 1.0, negative_eigenvalues: bool = False, dt_bias: float = 0.0) -> TokenSystem:
    """The 1-D system with S_C^T S_B = mu, A = -a and a constant step size softplus(dt_bias) (S_dt = 0)."""
    return TokenSystem(S_B=torch.tensor([[mu]], dtype=F64), S_C=torch.ones(1, 1), S_dt=torch.zeros(1, 1), A=-a,
                       dt_bias=dt_bias, negative_eigenvalues=negative_eigenvalues)


def random_system(d: int, n: int, seed: int, negative_eigenvalues: bool, scalar_dt: bool = False) -> TokenSystem:
    g = torch.Generator().manual_seed(seed)
    rows = 1 if scalar_dt else d
    return TokenSystem(S_B=torch.randn(n, d, generator=g, dtype=F64), S_C=torch.randn(n, d, generator=g, dtype=F64),
                       S_dt=0.5 * torch.randn(rows, d, generator=g, dtype=F64),
                       dt_bias=torch.randn(rows, generator=g, dtype=F64),
                       A=-torch.rand(d, n, generator=g, dtype=F64) * 3, negative_eigenvalues=negative_eigenvalues)


def pairwise_velocity(system: TokenSystem, x: torch.Tensor) -> torch.Tensor:
    """dx_l/dt as the double sum of the derivation: sum_{j<=l} sum_n C_l[n] B_j[n] dt_j prod_{k=j+1..l} a_k x_j."""
    dt = F.softplus(x @ system.S_dt.T + system.dt_bias).expand(x.shape)  # [L, d]
    B, C = x @ system.S_B.T, x @ system.S_C.T  # [L, N]
    e = torch.exp(dt.unsqueeze(-1) * system.A)  # [L, d, N]
    decay = 2 * e - 1 if system.negative_eigenvalues else e
    out = torch.zeros_like(x)
    for l in range(x.shape[0]):
        for j in range(l + 1):
            weight = torch.ones_like(decay[0])
            for k in range(j + 1, l + 1):
                weight = weight * decay[k]
            out[l] += (weight * (C[l] * B[j])).sum(-1) * dt[j] * x[j]
    return out


# ---- the system is the derived one ----------------------------------------------------------------------
@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_velocity_is_the_derived_double_sum(negative_eigenvalues):
    system = random_system(d=5, n=3, seed=0, negative_eigenvalues=negative_eigenvalues)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(token_velocity(system, x), pairwise_velocity(system, x), rtol=1e-12, atol=1e-12)
    batched = token_velocity(system, torch.stack([2 * x, x]))  # batch rows are independent systems
    torch.testing.assert_close(batched[1], token_velocity(system, x), rtol=1e-12, atol=1e-12)


def test_one_decay_and_one_step_size_give_the_issues_bilinear_form():
    """With A = -a and a scalar dt: dx_l/dt = sum_j (x_l^T M x_j) dt_j exp(-a sum_{k=j+1..l} dt_k) x_j."""
    base = random_system(d=4, n=3, seed=2, negative_eigenvalues=False, scalar_dt=True)
    a = 0.7
    system = TokenSystem(base.S_B, base.S_C, base.S_dt, A=-a, dt_bias=base.dt_bias)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    dt = F.softplus(x @ system.S_dt.T + system.dt_bias).squeeze(-1)  # [L]
    M = interaction_matrix(system)
    expected = torch.stack([sum((x[l] @ M @ x[j]) * dt[j] * torch.exp(-a * dt[j + 1:l + 1].sum()) * x[j]
                                for j in range(l + 1)) for l in range(5)])
    torch.testing.assert_close(token_velocity(system, x), expected, rtol=1e-12, atol=1e-12)


# ---- the integrator --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mu", [-0.8, 0.8])
def test_rk4_matches_the_closed_form_of_one_token(mu):
    """One token, 1-D, constant dt = softplus(b): x' = mu dt x^3, so x(t) = x0 / sqrt(1 - 2 mu dt x0^2 t)."""
    b, x0 = 0.3, 1.5
    dt = F.softplus(torch.tensor(b, dtype=F64)).item()
    blowup = 1 / (2 * mu * dt * x0 ** 2) if mu > 0 else math.inf
    t_end = 0.9 * blowup if mu > 0 else 100.0
    trajectory = integrate(scalar_system(mu, dt_bias=b), torch.tensor([[x0]], dtype=F64), t_end, rel_step=0.01)
    exact = x0 / torch.sqrt(1 - 2 * mu * dt * x0 ** 2 * trajectory.times)
    torch.testing.assert_close(trajectory.norms[:, 0], exact, rtol=1e-8, atol=0)
    assert trajectory.times[-1].item() == t_end and trajectory.blowup_time is None


def test_rk4_stops_at_a_finite_time_blowup():
    mu, x0 = 0.8, 1.5
    trajectory = integrate(scalar_system(mu), torch.tensor([[x0]], dtype=F64), 10.0)
    assert trajectory.blowup_time == pytest.approx(1 / (2 * mu * LN2 * x0 ** 2), rel=1e-3)
    assert torch.isfinite(trajectory.norms).all()


@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_rk4_matches_scipy(negative_eigenvalues):
    solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp
    system = random_system(d=3, n=2, seed=4, negative_eigenvalues=negative_eigenvalues)
    x0 = 0.2 * torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    trajectory = integrate(system, x0, t_end=0.8, rel_step=0.01, keep_states=True)  # blow-up after t = 1.1
    assert trajectory.blowup_time is None

    def f(_t, flat):
        return token_velocity(system, torch.from_numpy(flat).reshape(x0.shape)).reshape(-1).numpy()

    reference = solve_ivp(f, (0.0, 0.8), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12,
                          t_eval=trajectory.times.numpy())
    expected = torch.from_numpy(reference.y.T).reshape(trajectory.states.shape)
    torch.testing.assert_close(trajectory.states, expected, rtol=1e-7, atol=1e-9)


# ---- the regimes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_negative_regime_decays_like_one_over_sqrt_t_with_the_derived_constants(negative_eigenvalues):
    """1-D, mu < 0, constant dt: t x_1^2 -> K = 1 / (2 |mu| dt) and t x_l^2 -> K (1 - rho) for l >= 2, rho the
    per-step decay (exp(-a dt), or 2 exp(-a dt) - 1 in the [-1, 1] range: then rho < 0 and the constant grows)."""
    mu, a = -0.5, 2.0
    x0 = torch.tensor([[1.0], [-0.5], [0.8], [2.0]], dtype=F64)
    trajectory = integrate(scalar_system(mu, a, negative_eigenvalues), x0, t_end=1e6)
    K, e = 1 / (2 * abs(mu) * LN2), math.exp(-a * LN2)
    rho = 2 * e - 1 if negative_eigenvalues else e
    scaled = trajectory.times[-1] * trajectory.norms[-1] ** 2
    torch.testing.assert_close(scaled, torch.tensor([K] + [K * (1 - rho)] * 3, dtype=F64), rtol=1e-3, atol=0)


def test_negative_definite_single_token_is_squeezed_between_one_over_sqrt_t_envelopes():
    """d|x|^2/dt = 2 (x^T M x) sum_c dt_c x_c^2 with sym(M) in [lo, hi] < 0 and dt in [dt_lo, dt_hi]: 1/|x|^2 grows
    at a rate between 2 |hi| dt_lo and 2 |lo| dt_hi."""
    g = torch.Generator().manual_seed(6)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))[0]
    S_B = -torch.diag(torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64)) @ Q.T  # S_C^T S_B = -Q diag Q^T
    system = TokenSystem(S_B=S_B, S_C=Q.T, S_dt=torch.zeros(4, 4, dtype=F64),
                         dt_bias=torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=F64), A=-1.0)
    assert spectrum(interaction_matrix(system)).regime == "convergent"
    x0 = torch.randn(1, 4, generator=g, dtype=F64)
    trajectory = integrate(system, x0, t_end=1e4)
    dt = F.softplus(system.dt_bias)
    inverse = 1 / trajectory.norms[:, 0] ** 2 - 1 / x0.norm() ** 2
    assert (inverse >= 2 * 0.5 * dt.min() * trajectory.times * (1 - 1e-9)).all()
    assert (inverse <= 2 * 2.0 * dt.max() * trajectory.times * (1 + 1e-9)).all()


@pytest.mark.parametrize("dim", [1, 3])
def test_positive_definite_regime_grows_later_tokens_faster(dim):
    """Equal starting tokens, sym(M) positive definite, [0, 1] range: every norm grows, later tokens faster."""
    g = torch.Generator().manual_seed(7)
    Q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))[0]
    system = TokenSystem(S_B=torch.diag(torch.linspace(0.5, 1.0, dim, dtype=F64)) @ Q.T, S_C=Q.T,
                         S_dt=torch.zeros(1, dim, dtype=F64), A=-0.5)
    assert spectrum(interaction_matrix(system)).regime == "divergent"
    x0 = torch.randn(1, dim, generator=g, dtype=F64).expand(5, dim)
    trajectory = integrate(system, x0, t_end=100.0)
    assert trajectory.blowup_time is not None
    norms = trajectory.norms[1:][trajectory.norms[1:].max(-1).values < 100 * x0.norm(dim=-1).max()]  # resolved times
    assert norms.shape[0] > 10
    assert (norms.diff(dim=0) > 0).all()  # every token grows
    assert (norms.diff(dim=1) > 0).all()  # later tokens are larger at every time


# ---- the [-1, 1] range changes the sign argument ---------------------------------------------------------
@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_the_sign_of_each_tokens_growth_is_mu_times_the_scanned_sum(negative_eigenvalues):
    """1-D: d x_l^2/dt = 2 mu x_l^2 S_l with S_l = rho_l S_{l-1} + dt_l x_l^2, rho_l the per-step decay."""
    system = TokenSystem(S_B=torch.tensor([[0.7]], dtype=F64), S_C=torch.ones(1, 1),
                         S_dt=torch.tensor([[0.9]], dtype=F64), A=-6.0, dt_bias=0.2,
                         negative_eigenvalues=negative_eigenvalues)
    x = torch.tensor([[1.5], [-0.3], [0.9], [0.2], [-1.1]], dtype=F64)
    dt = F.softplus(0.9 * x[:, 0] + 0.2)
    e = torch.exp(-6.0 * dt)
    rho = 2 * e - 1 if negative_eigenvalues else e
    running, sums = 0.0, []
    for l in range(5):
        running = rho[l] * running + dt[l] * x[l, 0] ** 2
        sums.append(running)
    growth = 2 * x[:, 0] * token_velocity(system, x)[:, 0]
    torch.testing.assert_close(growth, 2 * 0.7 * x[:, 0] ** 2 * torch.stack(sums), rtol=1e-12, atol=1e-14)
    assert (torch.stack(sums) > 0).all() != negative_eigenvalues  # [0, 1]: S_l > 0 always; here some S_l < 0


@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_negative_eigenvalues_can_shrink_a_token_in_the_positive_regime(negative_eigenvalues):
    """mu > 0, two equal tokens, decays near -1: S_2 = dt x_2^2 + rho dt x_1^2 turns negative once x_1 outgrows
    x_2, so token 2 shrinks while token 1 blows up -- in the [0, 1] range both grow."""
    system = scalar_system(1.0, a=20.0, negative_eigenvalues=negative_eigenvalues)
    trajectory = integrate(system, torch.tensor([[1.0], [1.0]], dtype=F64), t_end=10.0)
    assert trajectory.blowup_time is not None  # token 1 alone: x' = dt x^3 blows up
    second = trajectory.norms[:, 1]
    if negative_eigenvalues:
        assert second[-1] < 0.9 * second[0]
    else:
        assert second[-1] > 10 * second[0]


def test_negative_eigenvalues_can_grow_a_token_in_the_negative_regime():
    """mu < 0, decays near -1, |x_1| > |x_2|: S_2 < 0 at the start, so token 2 first grows; it still decays later."""
    system = scalar_system(-1.0, a=20.0, negative_eigenvalues=True)
    trajectory = integrate(system, torch.tensor([[1.0], [0.5]], dtype=F64), t_end=1e4)
    second = trajectory.norms[:, 1]
    assert second.max() > 1.1 * second[0] and second[-1] < 0.1 * second[0]


# ---- spectra of a model ---------------------------------------------------------------------------------
def tiny_mamba_model(d_state: int = 3, n_layers: int = 2, **kwargs) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=32, d_model=8, n_layers=n_layers, mixer="mamba",
                                     mixer_kwargs={"mamba": {"d_state": d_state, **kwargs}}))


def unit_upper_triangular(rows: int, cols: int, seed: int) -> torch.Tensor:
    P = torch.triu(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64))
    P[range(rows), range(rows)] = 1.0
    return P


@pytest.mark.parametrize("signs, regime", [((1.0, 2.0, 0.5), "divergent"), ((-1.0, -2.0, -0.5), "convergent"),
                                           ((1.0, -2.0, 0.5), "mixed")])
def test_spectrum_of_a_model_layer_is_that_of_the_hand_built_matrix(signs, regime):
    """x_proj rows W_B = D P, W_C = P (refinement 1's form): S_C^T S_B = P^T D P, with D's signs."""
    model = tiny_mamba_model(d_state=3)
    mixer = model.layers[1].mixer
    P, D = unit_upper_triangular(3, mixer.d_inner, seed=8), torch.tensor(signs, dtype=F64)
    with torch.no_grad():
        mixer.x_proj.weight[mixer.dt_rank:mixer.dt_rank + 3] = (D[:, None] * P).float()
        mixer.x_proj.weight[mixer.dt_rank + 3:] = P.float()
    hand_built = P.T @ torch.diag(D) @ P
    system = token_system(mixer)
    torch.testing.assert_close(interaction_matrix(system), hand_built, rtol=1e-6, atol=1e-6)
    result = spectrum(interaction_matrix(system))
    torch.testing.assert_close(result.eigenvalues, torch.linalg.eigvalsh(hand_built), rtol=1e-5, atol=1e-5)
    assert (result.n_positive, result.n_negative) == (sum(s > 0 for s in signs), sum(s < 0 for s in signs))
    assert result.n_zero == mixer.d_inner - 3 and result.regime == regime
    W_dt = mixer.x_proj.weight[:mixer.dt_rank].double()
    torch.testing.assert_close(system.S_dt, mixer.dt_proj.weight.double() @ W_dt)
    torch.testing.assert_close(system.A, -torch.exp(mixer.A_log.double()))


@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_the_token_system_of_a_layer_is_its_own_scan(negative_eigenvalues):
    """token_velocity(token_system(mixer), u) is the layer's SSM output on its x_proj input u: recovered from
    out_proj's input (y + D u) * silu(z), with z from in_proj."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=32, d_model=8, n_layers=1, mixer="mamba",
                                      negative_eigenvalues=negative_eigenvalues,
                                      mixer_kwargs={"mamba": {"d_state": 3}})).double()
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.A_log.add_(torch.randn_like(mixer.A_log))  # decays of both signs in the [-1, 1] range
        mixer.dt_proj.bias.add_(1.0)
    seen = {}
    mixer.in_proj.register_forward_hook(lambda _m, _i, output: seen.__setitem__("z", output[0, :, mixer.d_inner:]))
    mixer.out_proj.register_forward_pre_hook(lambda _m, inputs: seen.__setitem__("gated", inputs[0][0]))
    u = x_proj_inputs(model, torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]))[0]
    y = seen["gated"] / F.silu(seen["z"]) - mixer.D.detach() * u
    torch.testing.assert_close(token_velocity(token_system(mixer), u), y, rtol=1e-8, atol=1e-10)


def test_an_unstructured_x_proj_is_always_mixed_with_n_eigenvalues_of_each_sign():
    """sym(C^T B) = G^T J G / 2 with G = [B; C] (2N x d) and J = [[0, I], [I, 0]]: at most N eigenvalues of each
    sign, exactly N when G has rank 2N -- so a generic trained S6 layer is never purely convergent or divergent."""
    model = tiny_mamba_model(d_state=4)
    for _, mixer in mamba_layers(model):
        result = spectrum(interaction_matrix(token_system(mixer)))
        assert (result.n_positive, result.n_negative, result.regime) == (4, 4, "mixed")


def test_x_proj_inputs_are_the_conv_outputs_of_the_normed_embeddings():
    model = tiny_mamba_model()
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    block, mixer = model.layers[0], model.layers[0].mixer
    with torch.no_grad():
        x = mixer.in_proj(block.norm(model.embedding(ids)))[:, :mixer.d_inner]  # [T, d_inner]
        width = mixer.conv1d.weight.shape[-1]
        conv = F.conv1d(F.pad(x.T.unsqueeze(0), (width - 1, 0)), mixer.conv1d.weight, mixer.conv1d.bias,
                        groups=mixer.d_inner)
        expected = F.silu(conv[0].T).double()
    inputs = x_proj_inputs(model, ids)
    assert sorted(inputs) == [0, 1]
    torch.testing.assert_close(inputs[0], expected, rtol=1e-5, atol=1e-6)


def test_analyze_model_covers_exactly_the_mamba_layers():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=32, d_model=8, n_layers=3, mixer=["mamba", "deltanet", "mamba"],
                                      mixer_kwargs={"mamba": {"d_state": 2}}))
    results = analyze_model(model, torch.arange(6), horizon=10.0, max_steps=200)
    assert [r.layer for r in results] == [0, 2]
    for result in results:
        assert result.trajectory.norms.shape[1] == 6 and result.self_interaction.shape == (6,)
        assert result.to_dict()["spectrum"]["regime"] == "mixed"
    no_mamba = LanguageModel(ModelConfig(vocab_size=32, d_model=8, n_layers=1, mixer="deltanet"))
    with pytest.raises(ValueError, match="no Mamba"):
        analyze_model(no_mamba, torch.arange(4))


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    (dict(S_C=torch.zeros(2, 3)), "S_C must have the shape of S_B"),
    (dict(S_dt=torch.zeros(3, 2)), "S_dt must have shape"),
    (dict(A=0.5), "A must be <= 0"),
    (dict(A=torch.zeros(5)), "A must be a number"),
    (dict(dt_bias=torch.zeros(4)), "dt_bias must be a number or have shape"),
    (dict(negative_eigenvalues=1), "negative_eigenvalues must be a bool"),
    (dict(S_B=torch.full((1, 2), math.nan)), "S_B must be finite"),
])
def test_bad_token_systems_are_refused_by_name(kwargs, needle):
    args = dict(S_B=torch.ones(1, 2), S_C=torch.ones(1, 2), S_dt=torch.zeros(1, 2), A=-1.0)
    with pytest.raises((ValueError, TypeError), match=needle):
        TokenSystem(**{**args, **kwargs})


def test_bad_integration_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="t_end must be a finite number > 0, got 0"):
        rk4(lambda x: x, torch.ones(1, 1), 0)
    with pytest.raises(ValueError, match="rel_step must be a number in"):
        rk4(lambda x: x, torch.ones(1, 1), 1.0, rel_step=2.0)
    with pytest.raises(ValueError, match=r"x must be \[L, d\]"):
        token_velocity(scalar_system(1.0), torch.ones(3, 2))
    with pytest.raises(ValueError, match="input_ids must be a non-empty 1-D"):
        x_proj_inputs(tiny_mamba_model(), torch.ones(2, 3, dtype=torch.long))
