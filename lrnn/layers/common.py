"""Building blocks shared by the token mixers: norms, the short-conv module, dt initialisation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.ops import TokenTree, cache_blocks, check_seq_starts, compute_dtype, short_conv, tree_path, tree_short_conv
from lrnn.validation import check_positive


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in ``compute_dtype`` (float32 at least, float64 stays float64): for norms, decays and other
    precision-hungry math."""
    return x.to(compute_dtype(x.dtype))


def masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded positions (mask [B, T], True = real token) of x [B, T, ...]."""
    if mask is None:
        return x
    return x * mask.reshape(*mask.shape, *([1] * (x.ndim - 2))).to(x.dtype)


TreeKeep = dict[str, Any]
"""What a mixer's ``forward_tree(..., keep=...)`` keeps to commit any node afterwards (its per-node op
inputs, or per-node states): filled by ``forward_tree``, read by the mixer's ``commit_tree``."""


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||, eps)`` over the last dim -- ``F.normalize(x, dim=-1)`` -- with a hand-written backward.

    ``d x = (g - y (g . y)) / ||x||`` with y the output (``g / eps`` where the norm is clamped, as autograd
    gives): three passes over x instead of autograd's six or so for the norm, clamp, expand and division
    (fwd+bwd at the DeltaNet family's [256, 40, 4, 32] queries: ~2x faster, measured on one thread)."""
    return _L2NormalizeFunction.apply(x, eps)


class _L2NormalizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        raw = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        norm = raw.clamp_min(eps)
        y = x / norm
        ctx.save_for_backward(y, norm, raw < eps)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, norm, clamped = ctx.saved_tensors
        along = (grad * y).sum(-1, keepdim=True).masked_fill_(clamped, 0.0)  # a clamped norm passes no gradient
        return torch.addcmul(grad, y, along, value=-1).div_(norm), None


@dataclass(frozen=True)
class AcceptedPath:
    """The node of a verified tree whose path is committed to the cache.

    Attributes:
        tree: the verified ``TokenTree`` (N nodes). node: the accepted node, 0 <= node < N.
        path: LongTensor [L], the nodes from the root to ``node`` (L = depth + 1 tokens join the cache).
    """

    tree: TokenTree
    node: int
    path: torch.Tensor


def accepted_path(tree: TokenTree, node: int) -> AcceptedPath:
    """The ``AcceptedPath`` of ``node`` (0 <= node < N) in ``tree``."""
    if not 0 <= node < tree.num_nodes:
        raise ValueError(f"node must lie in [0, {tree.num_nodes - 1}] (a node of the tree), got {node}")
    return AcceptedPath(tree, node, tree_path(tree, node))


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim (computed in float32 at least)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive(dim=dim)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xw = wide(x)
        y = xw * torch.rsqrt(xw.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * wide(self.weight)).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm with a SiLU gate, normalised in groups of ``group_size`` channels.

    ``norm_before_gate=False`` (mamba_ssm's Mamba-2): ``norm(x * silu(z))``;
    ``norm_before_gate=True`` (flash-linear-attention's gated output norm): ``norm(x) * silu(z)``.
    """

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-5,
                 norm_before_gate: bool = False) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        check_positive(dim=dim, group_size=group_size)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if dim % group_size:
            raise ValueError(f"group_size must divide dim={dim}, got {group_size}")
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x, z [..., dim] -> [..., dim] in the dtype of x (computed in ``compute_dtype``), by
        ``_GatedRMSNormFunction``: one pass over cache-sized blocks forward and one backward."""
        xw = wide(x)
        shape = xw.shape
        rows = lambda t: t.reshape(-1, shape[-1])  # noqa: E731  [N, dim] (a view for contiguous inputs)
        y = _GatedRMSNormFunction.apply(rows(xw), None if z is None else rows(wide(z).to(xw.dtype)),
                                        self.weight.to(xw.dtype), self.group_size, self.eps, self.norm_before_gate)
        return y.reshape(shape).to(x.dtype)


class _GatedRMSNormFunction(torch.autograd.Function):
    """``GatedRMSNorm`` over rows x, z [N, dim] (z None: no gate), in blocks of rows (``cache_blocks``).

    With u = x * silu(z) (gate first) or u = x (norm first), per group of ``group_size`` channels
    ``r = (mean(u^2) + eps)^(-1/2)`` and ``y = u r w`` (norm first: times silu(z) after). Saves x, z and
    r ([N, groups]); the backward recomputes u and ``u r`` per block:
    ``du = r (g - u r mean(g u r))`` with ``g = dy w`` per group, ``dw = sum dy u r``.
    """

    @staticmethod
    def forward(ctx, x, z, weight, group_size: int, eps: float, norm_before_gate: bool):
        n, dim = x.shape
        y = torch.empty_like(x)
        r = x.new_empty(n, dim // group_size if group_size else 0, 1)
        for rows in cache_blocks(x):
            u = _gated_input(x[rows], None if z is None else z[rows], norm_before_gate)
            groups = u.reshape(u.shape[0], -1, group_size)
            torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps, out=r[rows])
            normed = (groups * r[rows]).reshape(u.shape)
            if z is not None and norm_before_gate:
                torch.mul(normed * weight, F.silu(z[rows]), out=y[rows])
            else:
                torch.mul(normed, weight, out=y[rows])
        ctx.group_size, ctx.norm_before_gate = group_size, norm_before_gate
        ctx.save_for_backward(x, z, weight, r)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, z, weight, r = ctx.saved_tensors
        gs, norm_first = ctx.group_size, ctx.norm_before_gate
        grad_x = torch.empty_like(x)
        grad_z = None if z is None else torch.empty_like(z)
        grad_weight = torch.zeros_like(weight)
        for rows in cache_blocks(x):
            x_b, z_b, g = x[rows], None if z is None else z[rows], grad[rows]
            u = _gated_input(x_b, z_b, norm_first)
            normed = (u.reshape(u.shape[0], -1, gs) * r[rows]).reshape(u.shape)  # u r
            if z_b is not None and norm_first:  # y = (u r w) silu(z)
                torch.ops.aten.silu_backward.grad_input(g * normed * weight, z_b, grad_input=grad_z[rows])
                g = g * F.silu(z_b)
            grad_weight += (g * normed).sum(0)
            g = (g * weight).reshape(u.shape[0], -1, gs)
            normed = normed.reshape(g.shape)
            centred = g - normed * (g * normed).mean(-1, keepdim=True)
            if z_b is None or norm_first:  # u = x
                torch.mul(r[rows], centred, out=grad_x[rows].view(g.shape))
            else:  # u = x silu(z)
                grad_u = (r[rows] * centred).reshape(u.shape)
                torch.ops.aten.silu_backward.grad_input(grad_u * x_b, z_b, grad_input=grad_z[rows])
                torch.mul(grad_u, F.silu(z_b), out=grad_x[rows])
        return grad_x, grad_z, grad_weight, None, None, None


def _gated_input(x: torch.Tensor, z: torch.Tensor | None, norm_before_gate: bool) -> torch.Tensor:
    """What ``GatedRMSNorm`` normalises: x, or x * silu(z) when the gate comes first."""
    return x if z is None or norm_before_gate else x * F.silu(z)


class ShortConv(nn.Module):
    """Causal depthwise conv over [B, T, D] with SiLU, cached in ``state[name]`` as the last W-1 inputs.

    The weight is stored as ``[D, 1, W]`` like ``nn.Conv1d`` (and mamba_ssm / fla checkpoints).
    """

    def __init__(self, dim: int, width: int = 4, bias: bool = True, activation: str | None = "silu") -> None:
        super().__init__()
        check_positive(dim=dim, width=width)
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(dim, 1, width))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        bound = 1.0 / math.sqrt(width)  # nn.Conv1d's default for a depthwise conv (fan_in = width)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None,
                name: str = "conv", mode: str | None = None, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; ``seq_starts`` [B, T] (bool): packed documents, no tap crosses a start."""
        initial = None if state is None else state.get(name)
        if mode is None:
            mode = "recurrent" if x.shape[1] == 1 and initial is not None else "chunk"
        y, final = short_conv(x, self.weight.squeeze(1).to(x.dtype),
                              None if self.bias is None else self.bias.to(x.dtype),
                              activation=self.activation, initial_state=initial,
                              output_final_state=state is not None, mode=mode, seq_starts=seq_starts)
        if state is not None:
            state[name] = final
        return y

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor], name: str = "conv") -> torch.Tensor:
        """One decode step: x [B, D] after the W-1 inputs cached in ``state[name]`` (updated) -> [B, D].

        The same sums as ``short_conv(mode="recurrent")`` on one token, without its sequence bookkeeping.
        """
        window = torch.cat([state[name].to(x.dtype), x.unsqueeze(1)], dim=1)  # [B, W, D]
        y = (window * self.weight.squeeze(1).t().to(x.dtype)).sum(1)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        if self.activation == "silu":
            y = F.silu(y)
        state[name] = window[:, 1:].clone(memory_format=torch.contiguous_format)  # standard strides
        return y

    def forward_tree(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None, tree: TokenTree,
                     name: str = "conv", keep: TreeKeep | None = None) -> torch.Tensor:
        """x [B, N, D] over the N nodes of ``tree`` -> [B, N, D], each node's window along its root-to-node
        path after the committed inputs in ``state[name]`` (read, not changed; absent: zeros). With a
        ``keep`` dict the conv inputs x are kept under ``name`` for ``commit_tree``."""
        if keep is not None:
            keep[name] = x
        initial = None if state is None else state.get(name)
        y, _ = tree_short_conv(x, self.weight.squeeze(1).to(x.dtype),
                               None if self.bias is None else self.bias.to(x.dtype), parents=tree,
                               activation=self.activation,
                               initial_state=None if initial is None else initial.to(x.dtype))
        return y

    def commit_tree(self, state: dict[str, torch.Tensor], kept: TreeKeep, accepted: AcceptedPath,
                    name: str = "conv") -> None:
        """Write into ``state[name]`` the conv state after the accepted node: the last W-1 inputs of its path
        (of the inputs ``forward_tree`` kept), older ones from the committed state -- ``tree_conv_state``'s
        result, taken directly along the path: a gather and a concatenation, where the tree function
        builds the whole tree's window table (a dozen small ops per conv; a DeltaNet layer has three)."""
        x, history = kept[name], self.weight.shape[-1] - 1
        initial = state.get(name)
        if initial is None:
            initial = x.new_zeros(x.shape[0], history, x.shape[2])
        window = torch.cat([initial.to(x.dtype), x.index_select(1, accepted.path)], dim=1)
        state[name] = window[:, window.shape[1] - history:].clone(memory_format=torch.contiguous_format)


def init_dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Inverse softplus of dt ~ log-uniform[dt_min, dt_max] (floored): softplus(bias) starts at dt."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^{-1}(dt)


SCAN_MODES = ("step", "recurrent", "chunk")


def scan_mode(hidden: torch.Tensor, state: dict[str, torch.Tensor] | None, mode: str | None = None, *,
              key: str = "ssm", scan_on_cpu: bool = False) -> str:
    """How a mixer runs its recurrence over ``hidden`` [B, T, ...]: one of ``SCAN_MODES``. The one rule:

    1. One token (T = 1) continuing a cached state (``key`` in ``state``): ``"step"``, the O(1) step op
       (``decay_step`` / ``delta_step``; at T = 1 it computes what ``"recurrent"`` does), unless the
       caller forces ``mode="chunk"``.
    2. Otherwise a forced ``mode`` (``"chunk"`` or ``"recurrent"``) as given.
    3. Otherwise ``"recurrent"`` on CPU for a mixer that passes ``scan_on_cpu`` (one whose chunked form
       does far more work than the scan, so it pays off only on parallel hardware), else ``"chunk"``.
    """
    if mode not in (None, "chunk", "recurrent"):
        raise ValueError(f"mode must be None, 'chunk' or 'recurrent', got {mode!r}")
    if mode != "chunk" and hidden.shape[1] == 1 and state is not None and key in state:
        return "step"
    if mode is not None:
        return mode
    return "recurrent" if scan_on_cpu and hidden.device.type == "cpu" else "chunk"


def run_short_conv(conv: ShortConv, x: torch.Tensor, state: dict[str, torch.Tensor] | None, name: str,
                   mode: str, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, T, D] through ``conv`` in a ``scan_mode`` mode: ``"step"`` takes ``ShortConv.step`` (or the
    recurrent path when ``state`` holds no conv history yet, which starts it from zeros, or when the token
    may start a document, ``seq_starts`` given)."""
    if mode == "step":
        if name in state and seq_starts is None:
            return conv.step(x[:, 0], state, name).unsqueeze(1)
        mode = "recurrent"
    return conv(x, state, name, mode, seq_starts)


def document_starts(seq_starts: torch.Tensor | None, hidden: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor | None:
    """Check a mixer's ``seq_starts`` (None, or bool [B, T] like ``hidden`` [B, T, d], True at the first
    token of each packed document) and return it. Packing and padding do not mix: a row is either
    packed with documents or left-padded, so ``mask`` must be None when ``seq_starts`` is given."""
    if seq_starts is None:
        return None
    check_seq_starts(seq_starts, hidden.shape[0], hidden.shape[1], hidden)
    if mask is not None:
        raise ValueError("seq_starts (packed documents) and a padding mask cannot be combined: pass one of them")
    return seq_starts


def forward_tree_by_paths(layer: nn.Module, hidden: torch.Tensor, state: dict[str, torch.Tensor] | None,
                          tree: TokenTree, keep: TreeKeep | None = None) -> torch.Tensor:
    """The tree path of a mixer without a tree form (a fallback; every built-in mixer has one, the LSTM's
    level by level): node m's output is the last output of
    ``layer`` run over m's root-to-node path from a copy of ``state``. hidden [B, N, d] -> [B, N, d_out].

    Exact by construction; costs one forward per node over its path (sum of depths + N tokens), so it
    suits the small verification trees only. ``state`` is not changed (each run gets a shallow copy of
    the dict; the layers replace their entries, they do not write into them). Each run leaves the state
    after its node in its copy: with a ``keep`` dict those N copies are kept (``"node_states"``) for
    ``commit_tree_by_paths``.
    """
    outputs, node_states = [], []
    for node in range(tree.num_nodes):
        path = tree_path(tree, node).to(hidden.device)
        copy = None if state is None else dict(state)
        outputs.append(layer(hidden[:, path], copy)[:, -1])
        node_states.append(copy)
    if keep is not None:
        keep["node_states"] = node_states
    if not outputs:
        return layer(hidden, None if state is None else dict(state))
    return torch.stack(outputs, dim=1)


def commit_tree_by_paths(state: dict[str, torch.Tensor], kept: TreeKeep, accepted: AcceptedPath) -> None:
    """The commit of ``forward_tree_by_paths``: the accepted node's own run left its state in a copy of the
    cache entry; that copy's entries become the cache's."""
    state.update(kept["node_states"][accepted.node])
