"""S4D: the linear time-invariant diagonal SSM mixer (Gu et al. 2022, "On the parameterization and
initialization of diagonal state space models"), with HiPPO-derived and PTD inits.

Each of the H = d_model channels is an independent SSM with N/2 complex modes (conjugate pairs):
``y = GLU(W GELU(SSM(u) + D u))``. Training and prefill use the kernel + FFT convolution (O(L log L));
single-token steps with a cache use the recurrence (O(N) per token). The state is cached as
``state["ssm"]``: the complex [B, H, N/2] state stored as a real [B, H, N/2, 2] tensor (safetensors and
``Cache.reorder`` handle real tensors only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.layers.common import AcceptedPath, TreeKeep, document_starts, scan_mode
from lrnn.layers.registry import MixerSpec, Variant, register
from lrnn.validation import check_flag, check_number, check_positive
from lrnn.ops import S4D_INITS, TokenTree, check_state_size, s4d_eigenvalues, tree_s4d_scan
from lrnn.ops import S4D_DISCRETIZATIONS as DISCRETIZATIONS, s4d_discretize, s4d_kernel, s4d_scan

State = dict[str, torch.Tensor]


def _complex(x: torch.Tensor) -> torch.Tensor:
    """A real [..., 2] parameter as a complex tensor [...] (computed, so .to(dtype) of the module works)."""
    return torch.complex(x[..., 0], x[..., 1])


class S4D(nn.Module):
    """S4D mixer: hidden [B, T, d_model] -> [B, T, d_model].

    Parameters (H = d_model, M = d_state / 2): ``log_dt`` [H] (dt log-uniform in [dt_min, dt_max]);
    ``A_real_log`` [H, M] with ``Re A = -exp(A_real_log)`` (kept negative), ``A_imag`` [H, M]; ``B``, ``C``
    [H, M, 2] (real, imaginary); ``D`` [H]; ``output_linear`` (H -> 2H, then GLU). With
    ``bidirectional=True`` a second ``C_anticausal`` adds an anti-causal kernel (non-causal: no cache,
    no decoding). A, B and log_dt carry ``_ssm_param = True`` (see ``s4d_param_groups``).

    Args:
        init: one of ``lrnn.ops.S4D_INITS`` ("legs", "lin", "inv", "real", "ptd").
        discretization: "zoh" or "bilinear".
        ptd_gamma: the perturbation-norm weight of the PTD init.
    """

    def __init__(self, d_model: int, d_state: int = 64, init: str = "legs", discretization: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, bidirectional: bool = False,
                 dropout: float = 0.0, ptd_gamma: float = 1.0) -> None:
        super().__init__()
        check_positive(d_model=d_model)
        check_state_size(d_state)
        check_flag("bidirectional", bidirectional)
        if init not in S4D_INITS:
            raise ValueError(f"init must be one of {S4D_INITS}, got {init!r}")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")
        if not check_number("dt_min", dt_min, 0, strict=True) <= check_number("dt_max", dt_max):
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        if not check_number("dropout", dropout, 0) < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.d_model, self.d_state, self.init, self.discretization = d_model, d_state, init, discretization
        self.bidirectional = bidirectional
        H, M = d_model, d_state // 2

        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        eig = s4d_eigenvalues(init, d_state, ptd_gamma)  # complex128 [M]
        # Re A < 0 is what the parameterisation can represent (and what stability needs).
        self.log_dt = nn.Parameter(log_dt)
        self.A_real_log = nn.Parameter(torch.log(-eig.real.clamp(max=-1e-4)).float().repeat(H, 1))
        self.A_imag = nn.Parameter(eig.imag.float().repeat(H, 1))
        self.B = nn.Parameter(torch.stack([torch.ones(H, M), torch.zeros(H, M)], dim=-1))
        # C ~ complex standard normal (real and imaginary parts of variance 1/2), as in S4D.
        self.C = nn.Parameter(torch.randn(H, M, 2) * math.sqrt(0.5))
        self.C_anticausal = nn.Parameter(torch.randn(H, M, 2) * math.sqrt(0.5)) if bidirectional else None
        self.D = nn.Parameter(torch.randn(H))
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(H, 2 * H)
        for p in (self.log_dt, self.A_real_log, self.A_imag, self.B):
            p._ssm_param = True
            p._no_weight_decay = True

    def ssm_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, B, C) complex [H, M] and dt [H] in the parameters' dtype."""
        A = torch.complex(-torch.exp(self.A_real_log), self.A_imag)
        return A, _complex(self.B), _complex(self.C), torch.exp(self.log_dt)

    def kernel(self, length: int) -> torch.Tensor:
        """The causal convolution kernel K [H, length] (float32 at least) of the current parameters."""
        A, B, C, dt = self.ssm_parameters()
        log_abar, bbar = s4d_discretize(A, B, dt, self.discretization)
        return s4d_kernel(log_abar, C * bbar, length)

    def forward(self, hidden: torch.Tensor, state: State | None = None, mask: torch.Tensor | None = None,
                mode: str | None = None, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, T, d_model] -> [B, T, d_model]; ``state`` (a Cache entry) is read and updated.

        ``seq_starts`` [B, T] (bool, packed documents): the state resets to zero at each document's first
        token. The FFT kernel cannot reset, so the chunk mode convolves each document in a row of its own
        (``s4d_scan``): exact, with a [documents, longest document, d_model] copy of the input."""
        seq_starts = document_starts(seq_starts, hidden, mask)
        if self.bidirectional and (state is not None or mode == "recurrent"):
            raise ValueError("a bidirectional S4D layer is non-causal: it cannot run with a cache, decode "
                             "token by token or use mode='recurrent' (build it with bidirectional=False)")
        mode = scan_mode(hidden, state, mode)
        if mode == "step":  # no single-token S4D op: the recurrent scan on one token is O(N) already
            mode = "recurrent"
        A, B, C, dt = self.ssm_parameters()
        initial = self._cached_state(state)
        y, final = s4d_scan(hidden, A, B, C, dt, self.D, self.discretization, initial_state=initial,
                            output_final_state=state is not None, mode=mode, mask=mask,
                            C_anticausal=None if self.C_anticausal is None else _complex(self.C_anticausal),
                            seq_starts=seq_starts)
        if state is not None:
            state["ssm"] = torch.view_as_real(final)
        y = self.dropout(F.gelu(y))
        return F.glu(self.output_linear(y), dim=-1)

    def forward_tree(self, hidden: torch.Tensor, state: State | None, tree: TokenTree,
                     keep: TreeKeep | None = None) -> torch.Tensor:
        """hidden [B, N, d_model] for the N nodes of ``tree`` -> [B, N, d_model]: node m's output as if its
        root-to-node path had followed the cached state (read, not changed), by ``tree_s4d_scan`` (the
        kernel at the depth differences under the ancestor mask: one pass, no forward per node). With a
        ``keep`` dict the scan's inputs are kept for ``commit_tree``."""
        if self.bidirectional:
            raise ValueError("a bidirectional S4D layer is non-causal: it has no tree path (build it with "
                             "bidirectional=False)")
        A, B, C, dt = self.ssm_parameters()
        initial = self._cached_state(state)
        y, states = tree_s4d_scan(hidden, A, B, C, dt, self.D, self.discretization, parents=tree,
                                  initial_state=initial, state_node=None if keep is None else "any")
        if keep is not None:
            keep["ssm"] = states
        y = self.dropout(F.gelu(y))
        return F.glu(self.output_linear(y), dim=-1)

    def commit_tree(self, state: State, kept: TreeKeep, accepted: AcceptedPath) -> None:
        """Advance the cache entry by the accepted path: the SSM state after its node, from what the last
        ``forward_tree(..., keep)`` computed (``S4DTreeStates.state_after``: the path's inputs by lag
        contracted with the powers of Abar the pass took; no discretisation or exponential again)."""
        final = kept["ssm"].state_after(accepted.node)
        state["ssm"] = torch.view_as_real(final)

    @staticmethod
    def _cached_state(state: State | None) -> torch.Tensor | None:
        """The complex SSM state [B, H, M] of a cache entry (stored as real [B, H, M, 2]), or None."""
        if state is None or "ssm" not in state:
            return None
        return torch.view_as_complex(state["ssm"].contiguous())


def s4d_param_groups(model: nn.Module, lr: float, ssm_lr: float, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups: the SSM parameters (A, B, dt of every S4D layer) with ``ssm_lr`` and no
    weight decay; other parameters marked ``_no_weight_decay`` or with fewer than 2 dims (biases, norms,
    D) with ``lr`` and no weight decay; everything else with ``lr`` and ``weight_decay``.
    Each group also holds ``lr_scale`` (its lr over ``lr``) for schedulers that set one global lr.
    Empty groups are left out. Use as ``torch.optim.AdamW(s4d_param_groups(model, ...))``."""
    for name, value in (("lr", lr), ("ssm_lr", ssm_lr), ("weight_decay", weight_decay)):
        check_number(name, value, 0)
    ssm, no_decay, decay = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if getattr(param, "_ssm_param", False):
            ssm.append(param)
        elif getattr(param, "_no_weight_decay", False) or param.ndim < 2:
            no_decay.append(param)
        else:
            decay.append(param)
    # lr_scale lets a schedule that sets one lr for all groups keep the ratio: group lr = lr(t) * lr_scale.
    scale = ssm_lr / lr if lr > 0 else 1.0
    groups = [dict(params=ssm, lr=ssm_lr, lr_scale=scale, weight_decay=0.0),
              dict(params=no_decay, lr=lr, lr_scale=1.0, weight_decay=0.0),
              dict(params=decay, lr=lr, lr_scale=1.0, weight_decay=weight_decay)]
    return [g for g in groups if g["params"]]


INIT_LABELS = {"legs": "LegS", "lin": "Lin", "inv": "Inv", "real": "Real", "ptd": "PTD"}
"""S4D init name -> its display name in model labels ("S4D-LegS")."""

S4D_SPEC = register(MixerSpec(
    name="s4d", label="S4D", summary="S4D: linear time-invariant diagonal SSM (FFT kernel; inits legs/lin/inv/real/ptd)",
    build=S4D, fields={"d_state": "d_state"},
    variant=Variant("init", choices=INIT_LABELS, label="{label}-{display}", tag="{name}-{value}"),
    small={"d_state": 8},
    core_flops=lambda layer, length: 4 * layer.d_state * layer.d_model))  # a diagonal state per channel
