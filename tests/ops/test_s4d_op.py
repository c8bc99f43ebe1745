"""The S4D op (``lrnn.ops.s4d``): discretisations, kernel, FFT convolution and the recurrence.

The FFT path is checked against the sequential recurrence and against plain formulas written here
(explicit powers by repeated multiplication, convolution by a double loop), float64 to 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrnn.ops.s4d import _expm1_complex, fft_conv, s4d_discretize, s4d_kernel, s4d_scan
from lrnn.testing import assert_relative_close, relative_error as rel_err

F64 = torch.float64
TOL = 1e-10
DISCS = pytest.mark.parametrize("disc", ["zoh", "bilinear"])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Relative-error check that also compares imaginary parts of complex tensors."""
    if expected.is_complex():
        actual, expected = torch.view_as_real(actual.resolve_conj()), torch.view_as_real(expected.resolve_conj())
    assert_relative_close(actual, expected, tol, what)


def ssm_inputs(B=3, T=23, H=4, M=5, seed=0, dtype=F64, state=False):
    """Random stable SSM parameters (Re A in [-2, -0.1], |Im A| <= 10, dt in [1e-3, 0.5]) and inputs."""
    g = torch.Generator().manual_seed(seed)
    cd = torch.complex128 if dtype == F64 else torch.complex64

    def c(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64),
                             torch.randn(*shape, generator=g, dtype=F64)).to(cd)

    A = torch.complex(-torch.rand(H, M, generator=g, dtype=F64) * 1.9 - 0.1,
                      (torch.rand(H, M, generator=g, dtype=F64) - 0.5) * 20).to(cd)
    dt = torch.exp(torch.rand(H, generator=g, dtype=F64) * math.log(500) + math.log(1e-3)).to(dtype)
    args = dict(u=torch.randn(B, T, H, generator=g, dtype=F64).to(dtype), A=A, B=c(H, M), C=c(H, M), dt=dt,
                D=torch.randn(H, generator=g, dtype=F64).to(dtype))
    if state:
        args["initial_state"] = c(B, H, M)
    return args


def explicit_discretization(A, B, dt, disc):
    """Abar, Bbar from the textbook formulas (no log space, no expm1)."""
    dta = dt[:, None] * A
    if disc == "zoh":
        return torch.exp(dta), (torch.exp(dta) - 1) / A * B
    return (1 + dta / 2) / (1 - dta / 2), dt[:, None] / (1 - dta / 2) * B


@DISCS
def test_kernel_equals_explicit_powers(disc):
    """``K_l = 2 Re(sum_m C_m Bbar_m Abar_m^l)`` with Abar^l by repeated multiplication."""
    a = ssm_inputs(T=17)
    log_abar, bbar = s4d_discretize(a["A"], a["B"], a["dt"], disc)
    abar_ref, bbar_ref = explicit_discretization(a["A"], a["B"], a["dt"], disc)
    assert_close(torch.exp(log_abar), abar_ref, 1e-13, "Abar")
    assert_close(bbar, bbar_ref, 1e-9, "Bbar")  # the explicit exp(z) - 1 itself loses ~1e-12 at dt=1e-3
    power, ref = torch.ones_like(abar_ref), []
    for _ in range(17):
        ref.append(2 * (a["C"] * bbar_ref * power).sum(-1).real)
        power = power * abar_ref
    assert_close(s4d_kernel(log_abar, a["C"] * bbar, 17), torch.stack(ref, -1), 1e-9, "kernel")


@pytest.mark.parametrize("length", [0, 1, 2, 3, 5, 16, 17, 99, 257])
def test_blocked_kernel_equals_the_vandermonde_sum_with_gradients(length):
    """s4d_kernel's blocked powers (Abar^(Rq) Abar^r) == ``2 Re(sum_m cb_m exp(l log Abar_m))`` with every
    power by its own exponential: values and gradients, float64 1e-10, float32 1e-4, lengths that are
    and are not whole blocks."""
    a = ssm_inputs(H=3, M=6, seed=length)
    log_abar, bbar = s4d_discretize(a["A"], a["B"], a["dt"], "zoh")
    for dtype, tol in ((torch.complex128, TOL), (torch.complex64, 1e-4)):
        leaves = [x.detach().to(dtype).requires_grad_() for x in (log_abar, a["C"] * bbar)]
        steps = torch.arange(length, dtype=leaves[0].real.dtype)
        direct = 2.0 * torch.einsum("hm,hml->hl", leaves[1], torch.exp(leaves[0].unsqueeze(-1) * steps)).real
        blocked = s4d_kernel(*leaves, length)
        assert blocked.shape == (3, length) and blocked.dtype == leaves[0].real.dtype
        if length == 0:
            continue
        assert_relative_close(blocked, direct, tol, "kernel")
        weights = torch.randn(3, length, generator=torch.Generator().manual_seed(1), dtype=F64).to(blocked.dtype)
        grads = torch.autograd.grad((blocked * weights).sum(), leaves)
        expected = torch.autograd.grad((direct * weights).sum(), leaves)
        for got, want, name in zip(grads, expected, ("log Abar", "C Bbar")):
            assert_close(got, want, tol, f"grad {name}")


def test_fft_conv_equals_direct_convolution_causal_and_anticausal():
    """fft_conv == the double-loop sum (causal kernel, and with an anti-causal one), odd length."""
    g = torch.Generator().manual_seed(3)
    u, k, k2 = torch.randn(2, 11, 3, generator=g, dtype=F64), torch.randn(3, 11, generator=g, dtype=F64), \
        torch.randn(3, 11, generator=g, dtype=F64)
    causal = torch.zeros_like(u)
    both = torch.zeros_like(u)
    for t in range(11):
        for s in range(11):
            if s <= t:
                causal[:, t] += k[:, t - s] * u[:, s]
            else:
                both[:, t] += k2[:, s - t - 1] * u[:, s]
    both += causal
    assert_close(fft_conv(u, k), causal, 1e-12, "causal conv")
    assert_close(fft_conv(u, k, k2), both, 1e-12, "bidirectional conv")


@DISCS
@pytest.mark.parametrize("T", [1, 2, 23, 64])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_fft_equals_recurrence_outputs_and_final_state(disc, T, with_state):
    """mode='chunk' (FFT) == mode='recurrent' in float64, with and without an initial state."""
    a = ssm_inputs(T=T, state=with_state, seed=T)
    y_c, s_c = s4d_scan(**a, discretization=disc, output_final_state=True, mode="chunk")
    y_r, s_r = s4d_scan(**a, discretization=disc, output_final_state=True, mode="recurrent")
    assert y_c.shape == a["u"].shape and y_c.dtype == F64 and s_c.dtype == torch.complex128
    assert_close(y_c, y_r, TOL, "outputs")
    assert_close(s_c, s_r, TOL, "final state")


@DISCS
def test_split_sequence_continues_from_the_state(disc):
    """Running [0, 9) then [9, T) from the returned state == one run over [0, T)."""
    a = ssm_inputs(T=25, state=True)
    full, s_full = s4d_scan(**a, discretization=disc, output_final_state=True)
    head = dict(a, u=a["u"][:, :9])
    y1, s1 = s4d_scan(**head, discretization=disc, output_final_state=True)
    tail = dict(a, u=a["u"][:, 9:], initial_state=s1)
    y2, s2 = s4d_scan(**tail, discretization=disc, output_final_state=True)
    assert_close(torch.cat([y1, y2], 1), full, TOL, "split outputs")
    assert_close(s2, s_full, TOL, "split final state")


def test_left_padding_mask_is_identity_steps_in_both_modes():
    """With left padding (mask False), both modes match running each row without its padding, from the
    same initial state: padded steps neither decay the state nor add input."""
    a = ssm_inputs(B=2, T=15, state=True)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[0, :4] = False
    mask[1, :1] = False
    for mode in ("chunk", "recurrent"):
        y, s = s4d_scan(**a, output_final_state=True, mode=mode, mask=mask)
        for row, start in ((0, 4), (1, 1)):
            one = {k: (v[row:row + 1, start:] if k == "u" else v[row:row + 1] if k == "initial_state" else v)
                   for k, v in a.items()}
            y_ref, s_ref = s4d_scan(**one, output_final_state=True, mode="recurrent")
            assert_close(y[row:row + 1, start:], y_ref, TOL, f"{mode}: row {row} outputs")
            assert_close(s[row:row + 1], s_ref, TOL, f"{mode}: row {row} state")


def test_float32_parameters_with_float64_input_compute_in_float64():
    """float32 parameters and float64 inputs: the kernel is built in float64 (same result as float64
    copies of the same parameter values, to 1e-12), the output is float64."""
    a = ssm_inputs(T=31)
    low = dict(a, A=a["A"].to(torch.complex64), B=a["B"].to(torch.complex64), C=a["C"].to(torch.complex64),
               dt=a["dt"].float(), D=a["D"].float())
    same_values = dict(low, A=low["A"].to(torch.complex128), B=low["B"].to(torch.complex128),
                       C=low["C"].to(torch.complex128), dt=low["dt"].double(), D=low["D"].double())
    y, _ = s4d_scan(**low)
    y_ref, _ = s4d_scan(**same_values)
    assert y.dtype == F64
    assert rel_err(y, y_ref) <= 1e-12


def test_float32_fft_matches_float64():
    """float32 everything: FFT path within 1e-4 of the float64 result."""
    a = ssm_inputs(T=100)
    a32 = {k: (v.to(torch.complex64) if v.is_complex() else v.float()) for k, v in a.items()}
    y32, _ = s4d_scan(**a32)
    y64, _ = s4d_scan(**a)
    assert y32.dtype == torch.float32
    assert rel_err(y32, y64) <= 1e-4


def test_expm1_complex_is_accurate_for_tiny_arguments():
    """exp(z) - 1 for |z| ~ 1e-9 (dt A at dt ~ 1e-9) keeps full relative precision: the naive form
    would lose ~9 digits."""
    z = torch.tensor([1e-9 + 2e-9j, -3e-10 + 1e-12j, 0.5 - 2.0j], dtype=torch.complex128)
    series = z + z ** 2 / 2 + z ** 3 / 6 + z ** 4 / 24
    exact = torch.exp(z) - 1
    ref = torch.where(z.abs() < 1e-3, series, exact)
    err = ((_expm1_complex(z) - ref).abs() / ref.abs()).max().item()
    assert err <= 1e-14


def test_gradcheck_fft_path():
    """torch.autograd.gradcheck of the FFT path w.r.t. u, A (complex), C and dt, with an initial state."""
    a = ssm_inputs(B=1, T=6, H=2, M=2, state=True)
    names = ["u", "A", "C", "dt", "initial_state"]
    leaves = [a[n].clone().requires_grad_() for n in names]

    def run(*xs):
        kw = dict(a, **dict(zip(names, xs)))
        y, s = s4d_scan(**kw, output_final_state=True)
        return y, torch.view_as_real(s)

    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("change,named", [
    (dict(discretization="euler"), "discretization"),
    (dict(mode="fft"), "mode"),
    (dict(u=torch.zeros(2, 5)), "u"),
    (dict(A=torch.zeros(4, 5)), "A"),
    (dict(C=torch.zeros(4, 3, dtype=torch.complex128)), "A, B, C"),
    (dict(dt=torch.ones(3)), "dt"),
    (dict(D=torch.ones(5)), "D"),
    (dict(initial_state=torch.zeros(3, 4, 4, dtype=torch.complex128)), "initial_state"),
    (dict(mask=torch.ones(3, 7, dtype=torch.bool)), "mask"),
], ids=["discretization", "mode", "u-2d", "A-real", "C-modes", "dt", "D", "state", "mask"])
def test_bad_arguments_raise_value_error_naming_them(change, named):
    a = ssm_inputs(T=5)
    with pytest.raises(ValueError, match=named):
        s4d_scan(**dict(a, **change))
