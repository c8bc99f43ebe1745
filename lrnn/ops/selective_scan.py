"""Mamba's (S6) selective scan as one autograd function: a sequential scan that stores little.

Per batch element, channel d and state n (decays per channel and state, one value per channel: the
V = 1 case of ``decay_recurrence`` with heads = channels)::

    e_t = exp(dt_t[d] * A[d, n])            a_t = e_t  ([0, 1] range)  or  2 e_t - 1  ([-1, 1] range)
    h_t = a_t * h_{t-1} + v_t[d] * B_t[n]   y_t[d] = sum_n C_t[n] h_t[d, n]

``decay_recurrence(mode="recurrent")`` computes the same through autograd, which keeps every step's
[B, D, N] state and the [B, T, D, N] decays (their log, sign and exponential) for the backward pass:
on a CPU that traffic, not arithmetic, is the cost. ``selective_scan`` computes each step's decay
from ``dt`` and ``A`` inside the loop, saves only the state at the start of every ``segment`` steps,
and in backward recomputes one segment's states at a time before running the adjoint scan over it::

    g_h_t = g_y_t[d] C_t[n] + a_{t+1} g_h_{t+1}      (g_h after the last step: the final state's gradient)
    g_a_t = g_h_t h_{t-1}    g_v_t[d] = sum_n g_h_t B_t[n]    g_B_t[n] = sum_d g_h_t v_t[d]
    g_C_t[n] = sum_d g_y_t[d] h_t[d, n]    g_dt_t[d] = sum_n g_a_t a'_t A    g_A = sum_{b, t} g_a_t a'_t dt_t

with ``a' = da/d(dt A)`` = e_t ([0, 1]) or 2 e_t ([-1, 1]), and ``g_h_0 = a_1 g_h_1`` for the initial
state. Memory beyond the inputs: ``T / S`` checkpoints kept from forward to backward, and ``2 S`` states
of [B, D, N] while backward recomputes one segment of S steps; the default ``S = ceil(sqrt(T / 2))``
minimises the total ``T / S + 2 S``. The tests check outputs and every gradient against
``decay_recurrence``.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from lrnn.ops import _checks
from lrnn.ops._chunking import compute_dtype
from lrnn.validation import check_flag, check_int

__all__ = ["selective_scan"]


_LAYOUT_X = "[batch, time, channels]"
_LAYOUT_BC = "[batch, time, d_state]"


# torch.compile runs this eagerly (a graph break) instead of tracing it: traced, its loops unroll into a
# graph that took 90 s to compile and made a parity-sized Mamba training step 2.8x slower on a CPU.
@torch.compiler.disable
def selective_scan(v: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
                   negative_eigenvalues: bool = False, initial_state: torch.Tensor | None = None,
                   output_final_state: bool = False,
                   segment: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``h_t = a_t h_{t-1} + v_t B_t``, ``y_t = h_t C_t`` with ``a_t = exp(dt_t A)`` (or ``2 exp(dt_t A) - 1``).

    Args:
        v: [B, T, D], the input of each channel (Mamba: ``dt * x``).
        dt: [B, T, D], the step sizes (>= 0; 0 on padding makes the step the identity when ``v`` is 0).
        A: [D, N], the continuous-time eigenvalues (<= 0: Mamba's ``-exp(A_log)``).
        B, C: [B, T, N], the input and output projections of the state.
        negative_eigenvalues: decays ``2 exp(dt A) - 1`` in [-1, 1] instead of ``exp(dt A)`` in [0, 1].
        initial_state: [B, D, N] or None (zeros).
        output_final_state: also return the state after the last step.
        segment: steps between the states forward keeps for backward, which recomputes the steps in
            between (None: ``ceil(sqrt(T / 2))``, the fewest states held: T / segment + 2 segment).

    Returns:
        ``(y, final_state)``: y [B, T, D] in the dtype of ``v``; the final state [B, D, N] in float32
        (float64 for float64 inputs), or None unless ``output_final_state``.
    """
    _check(v, dt, A, B, C, initial_state, negative_eigenvalues, segment)
    dtype = compute_dtype(v.dtype)
    batch, length, channels = v.shape
    h0 = (torch.zeros(batch, channels, A.shape[1], dtype=dtype, device=v.device) if initial_state is None
          else initial_state.to(dtype))
    if length == 0:  # nothing to scan: the state stays as it was
        return v.new_zeros(v.shape), (h0 if output_final_state else None)
    segment = math.ceil(math.sqrt(length / 2)) if segment is None else segment
    y, final = _SelectiveScan.apply(v.to(dtype), dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), h0,
                                    negative_eigenvalues, segment)
    return y.to(v.dtype), (final if output_final_state else None)


def _check(v, dt, A, B, C, initial_state, negative_eigenvalues, segment) -> None:
    _checks.check_tensor("v", v, 3, _LAYOUT_X)
    batch, length, channels = v.shape
    _checks.check_tensor("dt", dt, 3, _LAYOUT_X)
    _checks.check_shape("dt", dt, v.shape, _LAYOUT_X)
    _checks.check_tensor("A", A, 2, "[channels, d_state]")
    if A.shape[0] != channels:
        raise ValueError(f"A must have shape [channels, d_state] with channels = {channels} (v's last dim), "
                         f"got {tuple(A.shape)}")
    for name, x in (("B", B), ("C", C)):
        _checks.check_tensor(name, x, 3, _LAYOUT_BC)
        _checks.check_shape(name, x, (batch, length, A.shape[1]), _LAYOUT_BC)
    _checks.check_same_dtype_device({"v": v, "dt": dt, "A": A, "B": B, "C": C}, dtype=False)
    _checks.check_state(initial_state, (batch, channels, A.shape[1]), "[batch, channels, d_state]", v)
    check_flag("negative_eigenvalues", negative_eigenvalues)
    if segment is not None:
        check_int("segment", segment, 1)


def _decay_into(out: torch.Tensor, dt_t: torch.Tensor, A_t: torch.Tensor, log2: torch.Tensor | None) -> torch.Tensor:
    """One step's decays into ``out`` [B, N, D]: ``exp(dt_t A)``, or with ``log2`` (a [N, D] tensor of
    log 2: the [-1, 1] range) ``2 exp(dt_t A) - 1 = exp(dt_t A + log 2) - 1``. dt_t [B, D], A_t = A
    transposed [N, D]. In place: each op is one pass over a state-sized buffer that stays in cache,
    where a fresh tensor per op would be a page-faulting allocation."""
    if log2 is None:
        return torch.mul(dt_t.unsqueeze(-2), A_t, out=out).exp_()
    return torch.addcmul(log2, dt_t.unsqueeze(-2), A_t, out=out).exp_().sub_(1.0)


def _step_into(out: torch.Tensor, h: torch.Tensor, a: torch.Tensor, v_t: torch.Tensor, b_t: torch.Tensor) -> None:
    """``out = a h + B_t v_t`` (out may be h): h, a [B, N, D]; v_t [B, D]; b_t [B, N]."""
    torch.mul(h, a, out=out).addcmul_(b_t.unsqueeze(-1), v_t.unsqueeze(-2))


def _time_major(*xs: torch.Tensor) -> list[torch.Tensor]:
    """[B, T, ...] -> contiguous [T, B, ...]: each step's slice is then one contiguous block."""
    return [x.transpose(0, 1).contiguous() for x in xs]


class _SelectiveScan(torch.autograd.Function):
    """The scan and its adjoint (see the module docstring), looping over time with state-sized buffers.

    Inside, states are laid out [B, N, D] (channels innermost): every element-wise op then runs along
    the D contiguous channels, where the [B, D, N] layout's N = 16 inner loop would not vectorise.
    Buffers are few and reused: on a CPU, first touching a fresh state-sized buffer (page faults) costs
    several element-wise passes over it, which is why keeping all T states would be slower, not faster.
    """

    @staticmethod
    def forward(ctx, v, dt, A, B, C, h0, negative: bool, segment: int):
        v_tm, dt_tm, b_tm, c_tm = _time_major(v, dt, B, C)
        A_t = A.t().contiguous()  # [N, D]
        log2 = torch.full_like(A_t, math.log(2.0)) if negative else None
        h = h0.transpose(1, 2).contiguous()  # [B, N, D]
        a = torch.empty_like(h)
        y = v_tm.new_empty(v_tm.shape)  # [T, B, D]
        checkpoints = []
        for t in range(v_tm.shape[0]):
            if t % segment == 0:
                checkpoints.append(h.clone())
            _step_into(h, h, _decay_into(a, dt_tm[t], A_t, log2), v_tm[t], b_tm[t])
            torch.bmm(c_tm[t].unsqueeze(1), h, out=y[t].unsqueeze(1))  # y_t = C_t^T h_t
        ctx.save_for_backward(v_tm, dt_tm, A_t, b_tm, c_tm, *checkpoints)
        ctx.log2 = log2
        ctx.negative, ctx.segment = negative, segment
        return y.transpose(0, 1), h.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y, g_final):
        v_tm, dt_tm, A_t, b_tm, c_tm, *checkpoints = ctx.saved_tensors
        negative, segment, log2 = ctx.negative, ctx.segment, ctx.log2
        length, state = v_tm.shape[0], checkpoints[0]
        g_y = torch.zeros_like(v_tm) if g_y is None else g_y.transpose(0, 1).contiguous()
        g_h = torch.zeros_like(state) if g_final is None else g_final.transpose(1, 2).contiguous()
        g_v, g_dt, g_b, g_c = (torch.empty_like(x) for x in (v_tm, dt_tm, b_tm, c_tm))
        size = min(segment, length)
        states = state.new_empty(size + 1, *state.shape)  # h before and after each step of a segment
        decays = state.new_empty(size, *state.shape)
        g_z, scratch = torch.empty_like(state), torch.empty_like(state)
        g_A = torch.zeros_like(state)  # sum over t of g_z dt_t; g_A is its sum over the batch
        for start in reversed(range(0, length, segment)):
            steps = min(segment, length - start)
            states[0].copy_(checkpoints[start // segment])  # recompute the segment's states and decays
            for i in range(steps):
                t = start + i
                _step_into(states[i + 1], states[i], _decay_into(decays[i], dt_tm[t], A_t, log2),
                           v_tm[t], b_tm[t])
            # g_C_t = h_t g_y_t, the whole segment at once: [S, B, N, D] @ [S, B, D, 1].
            g_c[start:start + steps] = torch.matmul(states[1:steps + 1],
                                                    g_y[start:start + steps].unsqueeze(-1)).squeeze(-1)
            for i in reversed(range(steps)):
                t, a = start + i, decays[i]
                g_h.addcmul_(c_tm[t].unsqueeze(-1), g_y[t].unsqueeze(-2))  # + C_t g_y_t
                torch.bmm(b_tm[t].unsqueeze(1), g_h, out=g_v[t].unsqueeze(1))
                torch.bmm(g_h, v_tm[t].unsqueeze(-1), out=g_b[t].unsqueeze(-1))
                torch.mul(g_h, states[i], out=g_z)  # g_a; times da/d(dt A) = a (+ 1 for [-1, 1]):
                if negative:
                    g_z.addcmul_(g_z, a)
                else:
                    g_z.mul_(a)
                torch.sum(torch.mul(g_z, A_t, out=scratch), dim=1, out=g_dt[t])
                g_A.addcmul_(g_z, dt_tm[t].unsqueeze(-2))
                g_h.mul_(a)  # carried to step t - 1
        back = lambda x: x.transpose(0, 1)  # noqa: E731
        return back(g_v), back(g_dt), g_A.sum(0).t(), back(g_b), back(g_c), g_h.transpose(1, 2), None, None
