"""Mamba's (S6) selective scan as one autograd function: a sequential scan that stores little.

Per batch element, channel d and state n (decays per channel and state, one value per channel: the
V = 1 case of ``decay_recurrence`` with heads = channels)::

    e_t = exp(dt_t[d] * A[d, n])            a_t = e_t  ([0, 1] range)  or  2 e_t - 1  ([-1, 1] range)
    h_t = a_t * h_{t-1} + v_t[d] * B_t[n]   y_t[d] = sum_n C_t[n] h_t[d, n]

``decay_recurrence(mode="recurrent")`` computes the same through autograd, which keeps every step's
[B, D, N] state and the [B, T, D, N] decays (their log, sign and exponential) for the backward pass:
on a CPU that traffic, not arithmetic, is the cost. ``selective_scan`` forms the decays from ``dt`` and
``A`` inside, saves only the state at the start of every segment of ``S`` steps, and in backward
recomputes one segment's states at a time before running the adjoint scan over it::

    G_t = g_y_t[d] C_t[n] + g_h_t       (the full gradient of h_t; g_h after the last step: the final state's)
    g_h_{t-1} = a_t G_t                  g_z_t = G_t h_{t-1} a'_t       (g_z: the gradient of dt_t A)
    g_v_t[d] = sum_n G_t B_t[n]    g_B_t[n] = sum_d G_t v_t[d]    g_C_t[n] = sum_d g_y_t[d] h_t[d, n]
    g_dt_t[d] = sum_n g_z_t A      g_A = sum_{b, t} g_z_t dt_t

with ``a' = da/d(dt A)`` = e_t ([0, 1]) or 2 e_t ([-1, 1]); the initial state's gradient is the carried
``g_h_0``. Only the recurrences for h and g_h run step by step; the decays, the outputs and the gradients
of v, B, C, dt and A are batched ops over a whole segment. On a CPU the batch runs in blocks of rows sized
so that a block's few state buffers stay in cache (an element-wise pass over a whole-batch state is
memory-bound), each (block, segment) a contiguous slab. Memory beyond the inputs: ``T / S`` checkpoints
kept from forward to backward, and ``2 S`` states of a block while backward recomputes a segment; the
default ``S = ceil(sqrt(T / 2))``. The tests check outputs and every gradient against ``decay_recurrence``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
        segment: at most this many steps between the states forward keeps for backward, which recomputes
            the steps in between (None: ``ceil(sqrt(T / 2))``, the fewest states held: T / segment + 2 segment).
        block: batch rows scanned together (None: on a CPU as many as keep a block's buffers in cache,
            elsewhere the whole batch). It changes the speed, not the result.

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


def _advance(h: torch.Tensor, states: torch.Tensor, decays: torch.Tensor, v: torch.Tensor, b: torch.Tensor) -> None:
    """A segment's states from the state h [b, N, D] before it: ``states[i] = decays[i] states[i - 1] +
    B_i v_i`` with ``states[-1]`` read as h. states, decays [S, b, N, D]; v [S, b, D]; b (B) [S, b, N].
    The inputs ``B_i v_i`` of the whole segment first (one op), then one op per step."""
    torch.mul(b.unsqueeze(-1), v.unsqueeze(-2), out=states)
    for before, a, after in zip((h, *states.unbind(0)), decays.unbind(0), states.unbind(0)):
        after.addcmul_(before, a)


def _over_states(x: torch.Tensor, states: torch.Tensor, out: torch.Tensor) -> None:
    """``out[d] = sum_n x[n] states[n, d]``: x [S, b, N], states [S, b, N, D], out [S, b, D] (one bmm)."""
    rows, (n, d) = x.shape[0] * x.shape[1], states.shape[-2:]
    torch.bmm(x.view(rows, 1, n), states.view(rows, n, d), out=out.view(rows, 1, d))


def _over_channels(x: torch.Tensor, states: torch.Tensor, out: torch.Tensor) -> None:
    """``out[n] = sum_d states[n, d] x[d]``: x [S, b, D], states [S, b, N, D], out [S, b, N]. As a row times
    the transposed states: the batched matrix-vector product ``states @ x`` measured ~3x slower on a CPU."""
    rows, (n, d) = x.shape[0] * x.shape[1], states.shape[-2:]
    torch.bmm(x.view(rows, 1, d), states.view(rows, n, d).transpose(1, 2), out=out.view(rows, 1, n))


# The working set a block of batch rows may take per intra-op thread: 1.5 MiB, most of the 2 MiB per-core
# L2 of the machine the numbers in docs/benchmarks.md come from (tuned there, one thread: 0.75-6 MiB were
# within noise, 1.5 best or tied). An element-wise pass over a [256, 16, 256] float32 state (4 MiB, past
# L2) measured ~9x slower per element there than over blocks of 8-32 rows that stay in L2.
_CACHE_BYTES = 3 << 19


class _Layout:
    """The batch in blocks of ``rows`` and time in ``segments`` of ``steps``, each (block, segment) one
    contiguous [steps, rows, K] slab: ``split`` [B, T, K] -> [blocks, segments, steps, rows, K], ``join``
    back. Zero padding fills the last block and segment: a padded step (dt = 0, v = B = C = 0) keeps
    the state, a padded row stays zero, and what they produce is cut off by ``join``."""

    def __init__(self, batch: int, length: int, rows: int, segment: int) -> None:
        self.batch, self.length = batch, length
        self.blocks = -(-batch // rows)
        self.rows = -(-batch // self.blocks)  # as even as the blocks can be: the least padding
        self.segments = -(-length // segment)
        self.steps = -(-length // self.segments)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 0, 0, self.segments * self.steps - self.length, 0, self.blocks * self.rows - self.batch))
        return (padded.view(self.blocks, self.rows, self.segments, self.steps, x.shape[-1])
                .permute(0, 2, 3, 1, 4).contiguous())

    def join(self, x: torch.Tensor) -> torch.Tensor:
        whole = x.permute(0, 3, 1, 2, 4).reshape(self.blocks * self.rows, self.segments * self.steps, x.shape[-1])
        return whole[:self.batch, :self.length]

    def split_state(self, h: torch.Tensor) -> torch.Tensor:
        """[B, D, N] -> [blocks, rows, N, D] (contiguous)."""
        padded = F.pad(h.transpose(1, 2), (0, 0, 0, 0, 0, self.blocks * self.rows - self.batch))
        return padded.reshape(self.blocks, self.rows, *padded.shape[1:]).contiguous()

    def join_state(self, h: torch.Tensor) -> torch.Tensor:
        """[blocks, rows, N, D] -> [B, D, N]."""
        return h.view(self.blocks * self.rows, *h.shape[2:])[:self.batch].transpose(1, 2)


def _layout(v: torch.Tensor, d_state: int, segment: int, block: int | None) -> _Layout:
    """The blocks for v [B, T, D]: ``block`` rows, or on a CPU as many as keep the backward pass's buffers
    (``2 S + 2`` states of [rows, N, D]) within ``_CACHE_BYTES`` per intra-op thread (an op over a block
    splits it between the threads; only one thread was measured); one block elsewhere, where one launch
    per op over everything is what counts."""
    batch, length, channels = v.shape
    if block is None:
        if v.device.type == "cpu":
            steps = -(-length // -(-length // segment))
            row_bytes = (2 * steps + 2) * d_state * channels * v.element_size()
            block = max(1, min(batch, _CACHE_BYTES * torch.get_num_threads() // row_bytes))
        else:
            block = batch
    return _Layout(batch, length, block, segment)


class _SelectiveScan(torch.autograd.Function):
    """The scan and its adjoint (see the module docstring), looping over blocks of batch rows and, inside
    each, over segments of time and their steps.

    States are laid out [rows, N, D] (channels innermost): every element-wise op then runs along the D
    contiguous channels, where the [B, D, N] layout's N = 16 inner loop would not vectorise. A block's
    buffers are few, reused, and sized to stay in cache (``_layout``): the scan is a chain of element-wise
    passes, memory-bound over a whole-batch state but several times faster per element over a block that
    stays in L2. Only the recurrence itself runs step by step; what does not depend on the previous step
    (a segment's decays and outputs; in backward the gradients of v, B, C, dt and A from the per-step
    gradients of h_t and a_t) runs once per segment, a few ops over the segment's contiguous slab.
    """

    @staticmethod
    def forward(ctx, v, dt, A, B, C, h0, negative: bool, segment: int, block: int | None):
        layout = _layout(v, A.shape[1], segment, block)
        v_l, dt_l, b_l, c_l = (layout.split(x) for x in (v, dt, B, C))  # [blocks, segments, S, b, K]
        A_t = A.t().contiguous()  # [N, D]
        log2 = torch.full_like(A_t, math.log(2.0)) if negative else None
        state = layout.split_state(h0)  # [blocks, b, N, D], advanced block by block into the final state
        # each segment's start, one tensor per block: ~1 MiB allocations that malloc serves from memory it
        # keeps, where one [blocks, segments, b, N, D] tensor of tens of MiB is fresh memory each call
        # (a page fault per 4 KiB: it measured ~1 ms per MiB, a tenth of the forward pass)
        checkpoints = [state.new_empty(layout.segments, *state.shape[1:]) for _ in range(layout.blocks)]
        y = torch.empty_like(v_l)
        states, decays = (state.new_empty(layout.steps, *state.shape[1:]) for _ in range(2))
        for j in range(layout.blocks):
            h = state[j]
            for k in range(layout.segments):
                h = checkpoints[j][k].copy_(h)  # the segment starts from its checkpoint: states[-1] is rewritten
                _advance(h, states, _decays_into(decays, dt_l[j, k].unsqueeze(2), A_t, log2), v_l[j, k], b_l[j, k])
                _over_states(c_l[j, k], states, y[j, k])  # y_t = C_t^T h_t
                h = states[-1]
            state[j].copy_(h)
        ctx.save_for_backward(v_l, dt_l, A_t, b_l, c_l, *checkpoints)
        ctx.layout, ctx.log2, ctx.negative = layout, log2, negative
        return layout.join(y), layout.join_state(state)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y, g_final):
        v_l, dt_l, A_t, b_l, c_l, *checkpoints = ctx.saved_tensors
        layout = ctx.layout
        g_y = torch.zeros_like(v_l) if g_y is None else layout.split(g_y)
        # [blocks, b, N, D]: the final state's gradient, carried back in place to the initial state's
        g_state = (v_l.new_zeros(layout.blocks, *checkpoints[0].shape[1:]) if g_final is None
                   else layout.split_state(g_final))
        grads = {name: torch.empty_like(x) for name, x in (("v", v_l), ("dt", dt_l), ("B", b_l), ("C", c_l))}
        scratch = [g_state.new_empty(layout.steps, *g_state.shape[1:]) for _ in range(2)]
        g_A = g_state.new_zeros(g_state.shape[1:])  # the sum over t and blocks of g_z dt_t: [b, N, D]
        for j in range(layout.blocks):
            for k in reversed(range(layout.segments)):
                inputs = (v_l[j, k], dt_l[j, k], b_l[j, k], c_l[j, k], g_y[j, k])
                _SelectiveScan._backward_segment(ctx, inputs, {name: g[j, k] for name, g in grads.items()},
                                                 g_state[j], checkpoints[j][k], A_t, g_A, scratch)
        return (layout.join(grads["v"]), layout.join(grads["dt"]), g_A.sum(0).t(), layout.join(grads["B"]),
                layout.join(grads["C"]), layout.join_state(g_state), None, None, None)

    @staticmethod
    def _backward_segment(ctx, inputs, grads: dict[str, torch.Tensor], g_h: torch.Tensor, h: torch.Tensor,
                          A_t: torch.Tensor, g_A: torch.Tensor, scratch: list[torch.Tensor]) -> None:
        """The adjoint scan over one segment of one block: fills ``grads`` (v, dt, B, C: the segment's
        [S, b, K] slabs), carries ``g_h`` [b, N, D] from the gradient of the segment's last state back to
        that of the state ``h`` before it, and adds the segment's sum of ``g_z dt_t`` into g_A [b, N, D].

        Per step only what depends on the next step's g_h runs: ``G_t = g_h + C_t g_y_t`` (the full
        gradient of h_t), the carry ``g_h = a_t G_t`` and ``g_z_t = G_t h_{t-1} a'_t``. G_t overwrites the
        recomputed h_t, no longer needed once step t + 1 is done, and g_z_t the decay a_t; the segment's
        gradients of v, B, dt and A then come from them in a few batched ops.
        """
        v, dt, b, c, g_y = inputs
        states, decays = scratch
        dt = dt.unsqueeze(2)  # [S, b, 1, D]
        decays = _decays_into(decays, dt, A_t, ctx.log2)  # recompute the segment's decays and states
        _advance(h, states, decays, v, b)
        _over_channels(g_y, states, grads["C"])  # g_C_t = h_t g_y_t
        per_step = zip((h, *states.unbind(0)), states.unbind(0), decays.unbind(0), c.unsqueeze(-1).unbind(0),
                       g_y.unsqueeze(-2).unbind(0))
        for h_prev, full, a, c_t, g_y_t in reversed(list(per_step)):
            torch.addcmul(g_h, c_t, g_y_t, out=full)  # G_t = g_h + C_t g_y_t, over h_t
            torch.mul(full, a, out=g_h)  # carried to step t - 1
            # g_z_t = G_t h_{t-1} a'_t with a' = da/d(dt A) = a ([0, 1]) or a + 1 ([-1, 1]), over a_t
            if ctx.negative:
                torch.mul(full, h_prev, out=a).addcmul_(g_h, h_prev)
            else:
                torch.mul(g_h, h_prev, out=a)
        full, g_z = states, decays
        _over_states(b, full, grads["v"])  # g_v_t = B_t^T G_t
        _over_channels(v, full, grads["B"])  # g_B_t = G_t v_t
        torch.sum(torch.mul(g_z, A_t, out=full), dim=2, out=grads["dt"])  # g_dt_t = sum_n g_z_t A
        g_A.add_(torch.mul(g_z, dt, out=full).sum(0))  # g_A += sum_t g_z_t dt_t
