"""Mamba (S6) and Mamba-2 token mixers with an optional [-1, 1] eigenvalue range.

Both follow mamba_ssm's parameterisation, so its checkpoints map onto them one to one. With
``negative_eigenvalues=True`` the per-step decay ``a = exp(dt * A)`` in (0, 1] becomes ``2a - 1`` in
[-1, 1] (arXiv 2411.12537), computed in log space with a sign (``lrnn.ops.negative_range``) so the
chunked scan stays exact.
"""

from __future__ import annotations

from collections.abc import Callable

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.layers.common import (AcceptedPath, GatedRMSNorm, ShortConv, TreeKeep, document_starts, init_dt_bias,
                                 masked, run_short_conv, scan_mode)
from lrnn.layers.registry import MixerSpec, register
from lrnn.layers.reorder import ImportanceReorder
from lrnn.layers.token_dynamics import SignedXProj, check_token_dynamics
from lrnn.validation import check_flag, check_positive
from lrnn.ops import (TokenTree, compute_dtype, decay_recurrence, decay_step, expand_groups, negative_range,
                      reset_at_starts, selective_scan, tree_decay_recurrence)

State = dict[str, torch.Tensor]


def _signed_log_decay(log_a: torch.Tensor, negative_eigenvalues: bool, seq_starts: torch.Tensor | None = None):
    """(log|a'|, a' < 0) for a' = a ([0, 1] range) or a' = 2a - 1 ([-1, 1] range); a' = 0 at the document
    starts ``seq_starts`` [B, T] (packed documents), so no state crosses into a document."""
    signed = negative_range(log_a) if negative_eigenvalues else (log_a, None)
    return signed if seq_starts is None else reset_at_starts(seq_starts, *signed)


def _may_update_in_place(ssm: torch.Tensor | None, q: torch.Tensor) -> bool:
    """Whether a decode step may overwrite the cached state ``ssm``: no autograd graph can need it, and it
    is already in the step's compute dtype."""
    return (ssm is not None and not torch.is_grad_enabled() and not ssm.requires_grad
            and ssm.dtype == compute_dtype(q.dtype))


def _scan(q, k, v, log_a, negative, state: State | None, mode: str, chunk_size: int) -> torch.Tensor:
    """The SSM recurrence (scale 1) in a ``scan_mode`` mode, reading and updating ``state["ssm"]``:
    ``decay_step`` for a decode step, else ``decay_recurrence``. Shapes as in ``decay_recurrence``."""
    if mode == "step":  # shapes and decay ranges are right by construction: skip the per-token checks
        # In place when no graph needs the old state (inference): no state-sized allocation per token.
        # Cache snapshots (``Cache.clone``) hold copies, so they are not affected.
        y, state["ssm"] = decay_step(q, k, v, log_a, negative, scale=1.0, initial_state=state["ssm"],
                                     validate=False, update_in_place=_may_update_in_place(state["ssm"], q))
        return y
    y, ssm = decay_recurrence(q, k, v, log_a, negative, scale=1.0,
                              initial_state=None if state is None else state.get("ssm"),
                              output_final_state=state is not None, mode=mode, chunk_size=chunk_size)
    if state is not None:
        state["ssm"] = ssm
    return y


def _keep_recurrence(keep: TreeKeep | None, k, v, log_a, negative) -> None:
    """Keep a tree pass's per-node recurrence inputs (k, v, the signed log decay) for ``_commit_recurrence``."""
    if keep is not None:
        keep.update(k=k, v=v, log_decay=log_a, negative=negative)


def _commit_recurrence(state: State, kept: TreeKeep, accepted: AcceptedPath) -> None:
    """Write into ``state["ssm"]`` the state after the accepted node: ``decay_step`` once per node of its path,
    on the kept k, v and decays, from the committed state (the recurrence that path runs; outputs unused,
    k stands in for the query)."""
    k, v, log_a, negative = kept["k"], kept["v"], kept["log_decay"], kept["negative"]
    ssm = state.get("ssm")
    for m in accepted.path.tolist():
        node = slice(m, m + 1)
        _, ssm = decay_step(k[:, node], k[:, node], v[:, node], log_a[:, node],
                            None if negative is None else negative[:, node], scale=1.0, initial_state=ssm,
                            validate=False)
    state["ssm"] = ssm


def _selective_scan(v, dt, A, bmat, cmat, negative_eigenvalues: bool, state: State | None) -> torch.Tensor:
    """Mamba's scan with ``selective_scan``, reading and updating ``state["ssm"]`` (laid out [B, D, N, 1],
    as ``decay_recurrence`` keeps it): y [B, T, D]."""
    initial = None if state is None or "ssm" not in state else state["ssm"].squeeze(-1)
    y, final = selective_scan(v, dt, A, bmat, cmat, negative_eigenvalues=negative_eigenvalues,
                              initial_state=initial, output_final_state=state is not None)
    if state is not None:
        state["ssm"] = final.unsqueeze(-1)
    return y


class Mamba2(nn.Module):
    """Mamba-2 (SSD) mixer: ``y = out_proj(norm(SSD(x, dt, B, C) + D x, gate=z))``, x: [B, T, d_model].

    in_proj emits ``[z, x, B, C, dt]`` (sizes d_inner, d_inner, G*N, G*N, H); the short conv runs over
    ``[x, B, C]``; ``dt = clamp(softplus(dt + dt_bias), *dt_limit)``; ``A = -exp(A_log)`` per head;
    the scan is ``decay_recurrence`` with q = C, k = B, v = dt x, one decay per head.
    """

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, A_init_range: tuple[float, float] = (1.0, 16.0),
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, float("inf")), D_has_hdim: bool = False,
                 rmsnorm: bool = True, norm_before_gate: bool = False, conv_bias: bool = True,
                 bias: bool = False, chunk_size: int = 64, negative_eigenvalues: bool = False,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
                       ngroups=ngroups, chunk_size=chunk_size)
        check_flag("negative_eigenvalues", negative_eigenvalues)
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"expand * d_model = {d_inner} must be divisible by headdim = {headdim}")
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"the number of heads ({nheads}) must be divisible by ngroups = {ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range}")
        self.d_model, self.d_state, self.d_inner = d_model, d_state, d_inner
        self.headdim, self.nheads, self.ngroups = headdim, nheads, ngroups
        self.dt_limit, self.D_has_hdim, self.rmsnorm = tuple(dt_limit), D_has_hdim, rmsnorm
        self.chunk_size, self.negative_eigenvalues = chunk_size, negative_eigenvalues

        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias)
        self.conv1d = ShortConv(conv_dim, d_conv, bias=conv_bias)
        self.dt_bias = nn.Parameter(init_dt_bias(nheads, dt_min, dt_max, dt_init_floor))
        A = torch.empty(nheads).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner if D_has_hdim else nheads))
        self.norm = GatedRMSNorm(d_inner, d_inner // ngroups, norm_eps, norm_before_gate) if rmsnorm else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.A_log._no_weight_decay = self.D._no_weight_decay = self.dt_bias._no_weight_decay = True

    def forward(self, hidden: torch.Tensor, state: State | None = None, mask: torch.Tensor | None = None,
                mode: str | None = None, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, T, d_model] -> [B, T, d_model]; ``state`` (a Cache entry) is read and updated.

        ``mode``: None, "chunk" or "recurrent", resolved by ``scan_mode``; a decode step (one token after a
        cached state) runs the single-token ops ``ShortConv.step`` and ``decay_step``. ``seq_starts``
        [B, T] (bool, packed documents): the decay is 0 at each document's first token and the short conv
        does not reach across a start.
        """
        seq_starts = document_starts(seq_starts, hidden, mask)
        mode = scan_mode(hidden, state, mode)
        # decay_recurrence takes B and C per group (q k^T once per group); the decode step takes them per head
        z, x, bmat, cmat, dt, log_a, negative = self._features(
            hidden, mask, seq_starts, lambda xbc: run_short_conv(self.conv1d, xbc, state, "conv", mode, seq_starts),
            grouped=mode != "step")
        y = _scan(cmat, bmat, x * dt.unsqueeze(-1).to(x.dtype), log_a, negative, state, mode, self.chunk_size)
        return self._output(y, x, z)

    def forward_tree(self, hidden: torch.Tensor, state: State | None, tree: TokenTree,
                     keep: TreeKeep | None = None) -> torch.Tensor:
        """hidden [B, N, d_model] for the N nodes of ``tree`` -> [B, N, d_model]: node m's output as if its
        root-to-node path had followed the cached state (read, not changed). The short conv and the SSD
        scan run with the ancestor mask (``tree_short_conv``, ``tree_decay_recurrence``). With a ``keep``
        dict the conv inputs and the scan's per-node terms (``TreeNodeStates``) are kept for ``commit_tree``."""
        z, x, bmat, cmat, dt, log_a, negative = self._features(
            hidden, None, None, lambda xbc: self.conv1d.forward_tree(xbc, state, tree, keep=keep))
        v = x * dt.unsqueeze(-1).to(x.dtype)
        y, node_states = tree_decay_recurrence(cmat, bmat, v, log_a, negative, parents=tree, scale=1.0,
                                               initial_state=None if state is None else state.get("ssm"),
                                               state_node=None if keep is None else "any")
        if keep is not None:
            keep["ssm_states"] = node_states
        return self._output(y, x, z)

    def commit_tree(self, state: State, kept: TreeKeep, accepted: AcceptedPath) -> None:
        """Advance the cache entry ``state`` by the accepted path of the last ``forward_tree(..., keep)``
        without recomputing it: the conv window along the path, and the SSD state after the node in one
        contraction of what the tree pass solved (``TreeNodeStates``: one op whatever the path's length,
        where a ``decay_step`` per path node costs ~50 us each)."""
        self.conv1d.commit_tree(state, kept, accepted)
        state["ssm"] = kept["ssm_states"].state_after(accepted.node)

    def _features(self, hidden: torch.Tensor, mask: torch.Tensor | None, seq_starts: torch.Tensor | None,
                  short_conv: Callable[[torch.Tensor], torch.Tensor], grouped: bool = False):
        """The SSD scan's inputs from hidden [B, T, d_model], shared by the sequence and tree paths (which
        differ in how ``short_conv(xbc)`` runs): z [B, T, d_inner], x [B, T, H, P], B and C [B, T, G, N] if
        ``grouped`` else [B, T, H, N] (the heads of a group share its B and C: ``expand_groups``, with one
        group a stride-0 view), dt [B, T, H], and the signed log decay (``_signed_log_decay``; 0 on padding
        and at ``seq_starts``)."""
        b, t, _ = hidden.shape
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        z, xbc, dt = self._in_proj_parts(hidden)
        xbc = short_conv(masked(xbc, mask))
        x, bmat, cmat = torch.split(xbc, [self.d_inner, g * n, g * n], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        dt = masked(dt, mask)  # dt = 0 on padding: decay 1, no input
        log_a, negative = _signed_log_decay(dt.to(self.A_log.dtype) * -torch.exp(self.A_log), self.negative_eigenvalues,
                                            seq_starts)
        bmat, cmat = bmat.reshape(b, t, g, n), cmat.reshape(b, t, g, n)
        if not grouped:
            bmat, cmat = expand_groups(bmat, h), expand_groups(cmat, h)
        return z, x.reshape(b, t, h, p), bmat, cmat, dt, log_a, negative

    def _in_proj_parts(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """``in_proj(hidden)`` split into z [B, T, d_inner], xBC [B, T, d_inner + 2GN] and dt [B, T, H], as three
        products with row blocks of its weight (one ``in_proj``, as mamba_ssm checkpoints store it): the
        backward then joins weight-sized gradient blocks instead of copying three activation gradients
        into one [B, T, 2 d_inner + 2GN + H] tensor. Without autograd, or with ``in_proj`` replaced by an
        inference format (``lrnn.models.prepare_for_inference``), one product split into views."""
        sizes = [self.d_inner, self.d_inner + 2 * self.ngroups * self.d_state, self.nheads]
        if not (torch.is_grad_enabled() and isinstance(self.in_proj, nn.Linear)):
            return list(self.in_proj(hidden).split(sizes, dim=-1))
        weights = self.in_proj.weight.split(sizes)
        biases = [None] * 3 if self.in_proj.bias is None else self.in_proj.bias.split(sizes)
        return [F.linear(hidden, weight, bias) for weight, bias in zip(weights, biases)]

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The scan's y [B, T, H, P] + D x, the gated norm and out_proj -> [B, T, d_model]."""
        b, t = z.shape[:2]
        d = self.D.reshape(self.nheads, self.headdim) if self.D_has_hdim else self.D.unsqueeze(-1)
        y = torch.addcmul(y, x, d.to(x.dtype)).reshape(b, t, self.d_inner)
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z)
        return self.out_proj(y)


class Mamba(nn.Module):
    """Mamba (S6) mixer: per-channel selective scan ``h = exp(dt A) h + dt B x``, ``y = C h + D x``.

    in_proj emits ``[x, z]``; short conv over x; x_proj emits ``[dt (dt_rank), B (N), C (N)]``;
    ``dt = softplus(dt_proj(dt))``; ``A = -exp(A_log)`` [d_inner, N] (S4D-real init ``A_n = n + 1``).
    As a linear recurrence: heads = d_inner channels, K = N, V = 1, one decay per (channel, state).
    ``token_dynamics`` ("positive" | "negative" | "mixed"; None: a plain ``nn.Linear``) makes ``x_proj`` a
    ``SignedXProj``: ``W_C = P``, ``W_B = diag(D) P``, so ``S_C^T S_B = P^T D P`` has the signs of D.
    ``reorder_tau`` (a temperature > 0; None: off) scans the tokens in a learned soft importance order
    (``ImportanceReorder``) and maps the outputs back with ``P^T``: **not causal** (no cache, packing or mask).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, chunk_size: int = 16,
                 negative_eigenvalues: bool = False, token_dynamics: str | None = None,
                 reorder_tau: float | None = None) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, chunk_size=chunk_size)
        check_flag("negative_eigenvalues", negative_eigenvalues)
        check_token_dynamics(token_dynamics)
        d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        check_positive(dt_rank=dt_rank)  # after resolving "auto"
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model, self.d_state, self.d_inner, self.dt_rank = d_model, d_state, d_inner, dt_rank
        self.chunk_size, self.negative_eigenvalues = chunk_size, negative_eigenvalues
        self.token_dynamics = token_dynamics

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = ShortConv(d_inner, d_conv, bias=conv_bias)
        # token_dynamics: B and C rows tied so that S_C^T S_B has fixed signs (arXiv 2410.03292, refinement 1)
        self.x_proj = (nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False) if token_dynamics is None
                       else SignedXProj(d_inner, dt_rank, d_state, token_dynamics))
        # reorder_tau: arXiv 2410.03292's refinement 2, for whole-sequence (non-causal) use only
        self.reorder = None if reorder_tau is None else ImportanceReorder(d_inner, reorder_tau)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(d_inner, dt_min, dt_max, dt_init_floor))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.A_log._no_weight_decay = self.D._no_weight_decay = True

    def forward(self, hidden: torch.Tensor, state: State | None = None, mask: torch.Tensor | None = None,
                mode: str | None = None, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, T, d_model] -> [B, T, d_model]; ``state`` (a Cache entry) is read and updated.

        ``mode``: None, "chunk" or "recurrent", resolved by ``scan_mode``: None picks the step-by-step
        scan on CPU, the chunked one elsewhere (both are exact; tests check them against each other); a
        decode step (one token after a cached state) runs ``ShortConv.step`` and ``decay_step``.
        ``seq_starts`` [B, T] (bool, packed documents): the decays are 0 at each document's first token
        and the short conv does not reach across a start. ``selective_scan`` has no reset: the
        step-by-step mode then runs ``decay_recurrence``'s loop (exact, but it keeps every step's state).
        """
        if self.reorder is not None and (state is not None or mask is not None or seq_starts is not None):
            raise ValueError("a Mamba layer with reorder_tau is not causal: it takes whole sequences only "
                             f"(state, mask and seq_starts must be None, got state={state is not None}, "
                             f"mask={mask is not None}, seq_starts={seq_starts is not None})")
        seq_starts = document_starts(seq_starts, hidden, mask)
        # One value channel per (channel, state) head: the chunked form does ~chunk_size times the work of
        # the step-by-step scan, which pays off only on parallel hardware. On CPU the scan measured 37x
        # faster fwd + bwd at a width-64 training shape (docs/benchmarks.md).
        mode = scan_mode(hidden, state, mode, scan_on_cpu=True)
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        # The conv's parallel form whenever a sequence is scanned: its step-by-step form is a reference whose
        # backward writes a full-size gradient per step (it was a third of a CPU training step).
        x = run_short_conv(self.conv1d, masked(x, mask), state, "conv", "chunk" if mode == "recurrent" else mode,
                           seq_starts)
        if self.reorder is not None:  # the scan sees P x: the most important tokens last
            order = self.reorder.permutation(self.dt_proj(self.x_proj(x)[..., :self.dt_rank]))  # [B, T, T]
            x = order @ x
        dt, bmat, cmat = self._selection(x, mask)
        if mode == "recurrent" and seq_starts is None:  # one autograd function: no [B, T, d_inner, N] tensor kept
            y = _selective_scan(dt * x, dt, -torch.exp(self.A_log), bmat, cmat, self.negative_eigenvalues, state)
        else:
            y = _scan(*self._as_recurrence(x, dt, bmat, cmat, seq_starts), state, mode, self.chunk_size).squeeze(-1)
        y = torch.addcmul(y, x, self.D.to(x.dtype))  # + D x, one pass
        if self.reorder is not None:  # back to the original positions (approximately; exactly as tau -> 0)
            y = order.transpose(-1, -2) @ y
        y = y * F.silu(z)
        return self.out_proj(y)

    def forward_tree(self, hidden: torch.Tensor, state: State | None, tree: TokenTree,
                     keep: TreeKeep | None = None) -> torch.Tensor:
        """hidden [B, N, d_model] for the N nodes of ``tree`` -> [B, N, d_model], each node as if its path
        had followed the cached state (read, not changed): ``tree_short_conv``, then the selective scan as
        ``tree_decay_recurrence`` with one decay per (channel, state), level by level (``mode="recurrent"``:
        with heads = d_inner channels the chunked tree form would hold N^2 d_state decays per channel).
        With a ``keep`` dict the conv inputs and the scan's k, v and decays are kept for ``commit_tree``."""
        if self.reorder is not None:
            raise ValueError("a Mamba layer with reorder_tau is not causal (it permutes the sequence): it has no "
                             "tree path (build it with reorder_tau=None)")
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = self.conv1d.forward_tree(x, state, tree, keep=keep)
        dt, bmat, cmat = self._selection(x, None)
        q, k, v, log_a, negative = self._as_recurrence(x, dt, bmat, cmat, None)
        _keep_recurrence(keep, k, v, log_a, negative)
        y, _ = tree_decay_recurrence(q, k, v, log_a, negative, parents=tree, scale=1.0,
                                     initial_state=None if state is None else state.get("ssm"), mode="recurrent")
        y = (y.squeeze(-1) + x * self.D.to(x.dtype)) * F.silu(z)
        return self.out_proj(y)

    def commit_tree(self, state: State, kept: TreeKeep, accepted: AcceptedPath) -> None:
        """Advance the cache entry ``state`` by the accepted path of the last ``forward_tree(..., keep)``
        without recomputing it: the conv window along the path and the scan state after the node."""
        self.conv1d.commit_tree(state, kept, accepted)
        _commit_recurrence(state, kept, accepted)

    def _selection(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The input-dependent step and projections of x [B, T, d_inner] (after the conv): dt [B, T, d_inner]
        (0 on padding), B and C [B, T, N]."""
        dt, bmat, cmat = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return masked(F.softplus(self.dt_proj(dt)), mask), bmat, cmat

    def _as_recurrence(self, x, dt, bmat, cmat, seq_starts) -> tuple[torch.Tensor, ...]:
        """The selective scan as ``decay_recurrence`` inputs with one head per channel: q = C and k = B
        broadcast to [B, T, d_inner, N] (views), v = dt x [B, T, d_inner, 1], and the signed log decay
        ``dt A`` [B, T, d_inner, N] with its signs (``_signed_log_decay``; 0 at ``seq_starts``)."""
        heads = (*x.shape[:2], self.d_inner, self.d_state)
        log_a = dt.unsqueeze(-1).to(self.A_log.dtype) * -torch.exp(self.A_log)
        log_a, negative = _signed_log_decay(log_a, self.negative_eigenvalues, seq_starts)
        return cmat.unsqueeze(2).expand(heads), bmat.unsqueeze(2).expand(heads), (dt * x).unsqueeze(-1), log_a, negative


def _mamba2_headdim(heads: int, d_model: int, mixer_kwargs) -> dict:
    """Mamba-2 sizes heads by ``headdim``: ``heads`` = expand * d_model / headdim."""
    expand = mixer_kwargs.get("expand", MAMBA2.default("expand"))
    inner = expand * d_model
    if inner % heads:
        raise ValueError(f"heads must divide expand * d_model = {inner} for mamba2, got heads={heads}")
    return {"headdim": inner // heads}


MAMBA = register(MixerSpec(
    name="mamba", label="Mamba", summary="Mamba (S6): selective scan with a decay per channel and state",
    build=Mamba, eigenvalue_switch=True, fields={"d_state": "d_state", "chunk_size": "chunk_size"},
    small={"d_state": 4, "chunk_size": 8},
    core_flops=lambda layer, length: 4 * layer.d_state * layer.d_inner))  # k v^T and H^T q, per (channel, state)
MAMBA2 = register(MixerSpec(
    name="mamba2", label="Mamba-2", summary="Mamba-2 (SSD): one decay per head, chunked state-space duality",
    build=Mamba2, eigenvalue_switch=True,
    fields={"heads": _mamba2_headdim, "d_state": "d_state", "chunk_size": "chunk_size"},
    small={"d_state": 8, "headdim": 8, "chunk_size": 8},
    core_flops=lambda layer, length: 4 * layer.d_state * layer.d_inner))  # k v^T and H^T q: 4 N P per head
