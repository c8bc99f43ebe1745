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
                   output_final_state: bool = False, segment: int | None = None,
                   block: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
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
    _check(v, dt, A, B, C, initial_state, negative_eigenvalues, segment, block)
    dtype = compute_dtype(v.dtype)
    batch, length, channels = v.shape
    h0 = (torch.zeros(batch, channels, A.shape[1], dtype=dtype, device=v.device) if initial_state is None
          else initial_state.to(dtype))
    if length == 0:  # nothing to scan: the state stays as it was
        return v.new_zeros(v.shape), (h0 if output_final_state else None)
    segment = math.ceil(math.sqrt(length / 2)) if segment is None else segment
    y, final = _SelectiveScan.apply(v.to(dtype), dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), h0,
                                    negative_eigenvalues, segment, block)
    return y.to(v.dtype), (final if output_final_state else None)


def _check(v, dt, A, B, C, initial_state, negative_eigenvalues, segment, block) -> None:
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
    if block is not None:
        check_int("block", block, 1)


def _decays_into(out: torch.Tensor, dt: torch.Tensor, A_t: torch.Tensor, log2: torch.Tensor | None) -> torch.Tensor:
    """A segment's decays into ``out`` [S, b, N, D]: ``exp(dt A)``, or with ``log2`` (a [N, D] tensor of
    log 2: the [-1, 1] range) ``2 exp(dt A) - 1 = exp(dt A + log 2) - 1``. dt [S, b, 1, D], A_t = A
    transposed [N, D]. In place, a whole segment per op: few calls, each over a buffer that stays in cache."""
    if log2 is None:
        return torch.mul(dt, A_t, out=out).exp_()
    return torch.addcmul(log2, dt, A_t, out=out).exp_().sub_(1.0)


def _advance(h: torch.Tensor, states: torch.Tensor, decays: torch.Tensor, v_s, b_s, start: int) -> None:
    """A segment's states from the state before it: ``states[i] = decays[i] states[i - 1] + B_t v_t`` with
    ``states[-1]`` read as h [b, N, D] and t = start + i; states, decays [S, b, N, D]; v_s, b_s the per-step
    views of ``_steps``."""
    for i in range(states.shape[0]):
        t = start + i
        torch.mul(states[i - 1] if i else h, decays[i], out=states[i]).addcmul_(b_s[t], v_s[t])


def _time_major(*xs: torch.Tensor) -> list[torch.Tensor]:
    """[B, T, ...] -> contiguous [T, B, ...]: each step's slice of a block of rows is one contiguous block."""
    return [x.transpose(0, 1).contiguous() for x in xs]


def _steps(x: torch.Tensor, rows: slice, dim: int) -> tuple[torch.Tensor, ...]:
    """The per-step views of a time-major x [T, B, K] for the batch ``rows``, with a unit dimension inserted
    at ``dim`` of each step's [b, K] (``dim`` 1: [b, 1, K], a row; 2: [b, K, 1], a column), as bmm and
    broadcasting want them. Made once per block: one call instead of T indexing ops."""
    return x[:, rows].unsqueeze(dim + 1).unbind(0)


def _over_states(x: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``sum_n x[n] states[n, d]``: x [S, b, N], states [S, b, N, D] -> [S, b, D] (one bmm)."""
    return torch.matmul(x.unsqueeze(2), states).squeeze(2)


def _over_channels(x: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``sum_d states[n, d] x[d]``: x [S, b, D], states [S, b, N, D] -> [S, b, N]. As a row times the
    transposed states: the batched matrix-vector product ``states @ x`` measured ~3x slower on a CPU."""
    return torch.matmul(x.unsqueeze(2), states.transpose(-1, -2)).squeeze(2)


# The working set a block of batch rows may take: half of the 2 MiB per-core L2 of the machine the
# numbers in docs/benchmarks.md come from. An element-wise pass over a [256, 16, 256] float32 state
# (4 MiB, past L2) measured ~10x slower per element there than over blocks of 8-32 rows that stay in L2.
_CACHE_BYTES = 1 << 20


def _rows_per_block(batch: int, state: torch.Tensor, buffers: int) -> int:
    """Batch rows scanned together so that ``buffers`` state-sized buffers of that many rows fit in
    ``_CACHE_BYTES``; the whole batch off the CPU, where one launch per op over everything is what counts."""
    if state.device.type != "cpu":
        return batch
    row_bytes = state[0].numel() * state.element_size() * buffers
    return max(1, min(batch, _CACHE_BYTES // row_bytes))


def _row_blocks(batch: int, rows: int) -> list[slice]:
    return [slice(start, min(start + rows, batch)) for start in range(0, batch, rows)]


class _Buffers:
    """Reused scratch memory: ``take(*lead, rows)`` is a contiguous [*lead, rows, N, D] view of one flat
    allocation made for the largest block, so a last, smaller block of rows still gets contiguous
    buffers (a bmm over a strided slice would copy it)."""

    def __init__(self, like: torch.Tensor, rows: int, counts: dict[str, int]) -> None:
        self.row_shape, self.counts = like.shape[1:], counts
        self.row_size = like[0].numel()
        self.flat = like.new_empty(sum(counts.values()) * rows * self.row_size)

    def take(self, rows: int) -> dict[str, torch.Tensor]:
        views, offset = {}, 0
        for name, count in self.counts.items():
            size = count * rows * self.row_size
            views[name] = self.flat[offset:offset + size].view(count, rows, *self.row_shape)
            offset += size
        return views


class _SelectiveScan(torch.autograd.Function):
    """The scan and its adjoint (see the module docstring), looping over blocks of batch rows and, inside
    each, over segments of time and their steps.

    States are laid out [B, N, D] (channels innermost): every element-wise op then runs along the D
    contiguous channels, where the [B, D, N] layout's N = 16 inner loop would not vectorise. A block's
    buffers are few, reused, and sized to stay in cache (``_rows_per_block``): the scan is a chain of
    element-wise passes, memory-bound over a whole-batch state but several times faster per element over
    a block that stays in L2. Only the recurrence itself runs step by step; what does not depend on the
    previous step (a segment's decays and outputs; in backward the gradients of v, B, C, dt and A from the
    per-step gradients of h_t and a_t) runs once per segment, a few batched ops.
    """

    @staticmethod
    def forward(ctx, v, dt, A, B, C, h0, negative: bool, segment: int, block: int | None):
        v_tm, dt_tm, b_tm, c_tm = _time_major(v, dt, B, C)
        A_t = A.t().contiguous()  # [N, D]
        log2 = torch.full_like(A_t, math.log(2.0)) if negative else None
        length, batch = v_tm.shape[:2]
        size = min(segment, length)
        state = h0.transpose(1, 2).contiguous()  # [B, N, D], advanced block by block into the final state
        checkpoints = state.new_empty(-(-length // segment), *state.shape)  # the state before every segment
        y = v_tm.new_empty(v_tm.shape)  # [T, B, D]
        rows_per_block = block or _rows_per_block(batch, state, buffers=2 * size)
        buffers = _Buffers(state, rows_per_block, {"states": size, "decays": size})
        for rows in _row_blocks(batch, rows_per_block):
            scratch = buffers.take(rows.stop - rows.start)
            v_s, b_s = _steps(v_tm, rows, 1), _steps(b_tm, rows, 2)
            h = state[rows]
            for start in range(0, length, segment):
                seg = slice(start, min(start + segment, length))
                steps = seg.stop - start
                states = scratch["states"][:steps]
                checkpoints[start // segment, rows].copy_(h)
                decays = _decays_into(scratch["decays"][:steps], dt_tm[seg, rows].unsqueeze(2), A_t, log2)
                _advance(h, states, decays, v_s, b_s, start)
                y[seg, rows] = _over_states(c_tm[seg, rows], states)  # y_t = C_t^T h_t
                h = states[-1]
            state[rows].copy_(h)
        ctx.save_for_backward(v_tm, dt_tm, A_t, b_tm, c_tm, checkpoints)
        ctx.log2 = log2
        ctx.negative, ctx.segment, ctx.block = negative, segment, block
        return y.transpose(0, 1), state.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y, g_final):
        v_tm, dt_tm, A_t, b_tm, c_tm, checkpoints = ctx.saved_tensors
        length, batch = v_tm.shape[:2]
        g_y = torch.zeros_like(v_tm) if g_y is None else g_y.transpose(0, 1).contiguous()
        # [B, N, D]: the final state's gradient, carried back in place to the initial state's
        g_state = (checkpoints.new_zeros(checkpoints.shape[1:]) if g_final is None
                   else g_final.transpose(1, 2).contiguous())
        grads = {name: torch.empty_like(x) for name, x in (("v", v_tm), ("dt", dt_tm), ("B", b_tm), ("C", c_tm))}
        size = min(ctx.segment, length)
        rows_per_block = ctx.block or _rows_per_block(batch, g_state, buffers=2 * size + 1)
        buffers = _Buffers(g_state, rows_per_block, {"states": size, "decays": size, "g_A": 1})
        g_A = None
        for rows in _row_blocks(batch, rows_per_block):
            scratch = buffers.take(rows.stop - rows.start)
            g_A_rows = _SelectiveScan._backward_rows(ctx, rows, (v_tm, dt_tm, b_tm, c_tm, g_y), grads,
                                                     g_state[rows], checkpoints[:, rows], A_t, scratch)
            g_A = g_A_rows.sum(0) if g_A is None else g_A.add_(g_A_rows.sum(0))
        back = lambda x: x.transpose(0, 1)  # noqa: E731
        return (back(grads["v"]), back(grads["dt"]), g_A.t(), back(grads["B"]), back(grads["C"]),
                g_state.transpose(1, 2), None, None, None)

    @staticmethod
    def _backward_rows(ctx, rows: slice, inputs, grads: dict[str, torch.Tensor], g_h: torch.Tensor,
                       checkpoints: torch.Tensor, A_t: torch.Tensor, scratch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The adjoint scan over the batch ``rows``, one segment at a time from the last: fills their slices
        of ``grads`` (time-major), carries ``g_h`` [b, N, D] from the final state's gradient back to the
        initial state's, and returns the rows' sum over t of ``g_z dt_t`` [b, N, D] (g_A before the sum
        over rows).

        Per step only what depends on the next step's g_h runs: ``G_t = g_h + C_t g_y_t`` (the full
        gradient of h_t), the carry ``g_h = a_t G_t`` and ``g_z_t = G_t h_{t-1} a'_t``. G_t overwrites the
        recomputed h_t, no longer needed once step t + 1 is done, and g_z_t the decay a_t; the segment's
        gradients of v, B, dt and A then come from them in a few batched ops.
        """
        v_tm, dt_tm, b_tm, c_tm, g_y = inputs
        g_A = scratch["g_A"][0].zero_()
        negative, segment, log2 = ctx.negative, ctx.segment, ctx.log2
        v_s, b_s, c_s, g_y_s = (_steps(v_tm, rows, 1), _steps(b_tm, rows, 2), _steps(c_tm, rows, 2),
                                _steps(g_y, rows, 1))
        length = len(v_s)
        for start in reversed(range(0, length, segment)):
            seg = slice(start, min(start + segment, length))
            steps = seg.stop - start
            states, dt_seg = scratch["states"][:steps], dt_tm[seg, rows].unsqueeze(2)  # [S, b, 1, D]
            h = checkpoints[start // segment]  # recompute the segment's states and decays from it
            decays = _decays_into(scratch["decays"][:steps], dt_seg, A_t, log2)
            _advance(h, states, decays, v_s, b_s, start)
            grads["C"][seg, rows] = _over_channels(g_y[seg, rows], states)  # g_C_t = h_t g_y_t
            for i in reversed(range(steps)):
                t, h_prev, full = start + i, (states[i - 1] if i else h), states[i]
                torch.addcmul(g_h, c_s[t], g_y_s[t], out=full)  # G_t = g_h + C_t g_y_t, over h_t
                torch.mul(full, decays[i], out=g_h)  # carried to step t - 1
                # g_z_t = G_t h_{t-1} a'_t with a' = da/d(dt A) = a ([0, 1]) or a + 1 ([-1, 1]), over a_t
                if negative:
                    torch.mul(full, h_prev, out=decays[i]).addcmul_(g_h, h_prev)
                else:
                    torch.mul(g_h, h_prev, out=decays[i])
            full, g_z = states, decays
            # g_v_t = B_t^T G_t, g_B_t = G_t v_t, g_dt_t = sum_n g_z_t A, g_A += sum_t g_z_t dt_t
            grads["v"][seg, rows] = _over_states(b_tm[seg, rows], full)
            grads["B"][seg, rows] = _over_channels(v_tm[seg, rows], full)
            grads["dt"][seg, rows] = torch.mul(g_z, A_t, out=full).sum(2)
            g_A.add_(torch.mul(g_z, dt_seg, out=full).sum(0))
        return g_A
