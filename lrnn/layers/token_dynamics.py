"""Refinement 1 of arXiv 2410.03292: a Mamba ``x_proj`` whose B and C rows give ``S_C^T S_B`` a chosen sign.

Mamba's ``x_proj`` maps the conv output ``u`` [..., d_inner] to ``[dt (dt_rank); B (N); C (N)]``. Here the B
and C rows are tied through one unit upper-triangular ``P`` [N, d_inner] (ones on the diagonal, zeros below,
learned above) and a diagonal ``D``::

    W_C = P,    W_B = diag(D) P,    D_n = sign_n * (softplus(d_n) + 0.7)

so ``C_l^T B_j = u_l^T P^T diag(D) P u_j`` and ``M = S_C^T S_B = P^T diag(D) P`` is symmetric of rank N with
exactly the signs of ``D`` (Sylvester's law of inertia; ``P`` has full row rank). ``sign`` is +1 for every
state ("positive": no convergent token scenario), -1 ("negative": the convergent one, for comparison), or
+1 on the first ``ceil(N / 2)`` states and -1 on the rest ("mixed"). The offset 0.7 keeps ``|D_n| >= 0.7``:
no state can switch itself off. The dt rows stay a plain linear map. ``docs/token_dynamics.md`` section 5 says
what this does and does not guarantee, in particular with the [-1, 1] eigenvalue range.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_DYNAMICS = ("positive", "negative", "mixed")
"""The values of Mamba's ``token_dynamics`` option (None: the plain ``x_proj``)."""

SCALE_OFFSET = 0.7
"""``|D_n| = softplus(d_n) + SCALE_OFFSET`` (the authors' constant)."""


def check_token_dynamics(value: object) -> str | None:
    """``value`` if it is None or one of ``TOKEN_DYNAMICS``, else a TypeError / ValueError naming it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"token_dynamics must be None or a str in {TOKEN_DYNAMICS}, got {value!r}")
    if value not in TOKEN_DYNAMICS:
        raise ValueError(f"token_dynamics must be None or one of {TOKEN_DYNAMICS}, got {value!r}")
    return value


def state_signs(token_dynamics: str, d_state: int) -> torch.Tensor:
    """The fixed signs [d_state] of ``D``: all +1, all -1, or +1 on the first ``ceil(d_state / 2)`` states then -1."""
    if check_token_dynamics(token_dynamics) is None:
        raise ValueError(f"token_dynamics must be one of {TOKEN_DYNAMICS} here (None means the plain x_proj)")
    if token_dynamics == "positive":
        return torch.ones(d_state)
    if token_dynamics == "negative":
        return -torch.ones(d_state)
    n_positive = math.ceil(d_state / 2)
    return torch.cat([torch.ones(n_positive), -torch.ones(d_state - n_positive)])


class SignedXProj(nn.Module):
    """``x_proj`` of a Mamba layer with ``W_B = diag(D) P``, ``W_C = P`` (module docstring): u [..., d_inner] ->
    [..., dt_rank + 2 N]; ``weight`` [dt_rank + 2N, d_inner] is the equivalent plain ``nn.Linear`` weight.

    Parameters: ``dt_weight`` [dt_rank, d_inner] (the dt rows), ``upper`` [N, d_inner] (only its strictly upper
    part is used), ``scale`` [N] (the ``d`` of ``D``). The signs are a non-persistent buffer: they follow from
    the layer's config, so a checkpoint holds only learned tensors.
    """

    def __init__(self, d_inner: int, dt_rank: int, d_state: int, token_dynamics: str) -> None:
        super().__init__()
        if check_token_dynamics(token_dynamics) is None:
            raise ValueError(f"token_dynamics must be one of {TOKEN_DYNAMICS} for a SignedXProj, got None "
                             "(None means a plain nn.Linear x_proj)")
        if d_state > d_inner:
            raise ValueError(f"token_dynamics needs d_state <= d_inner (P is unit upper-triangular "
                             f"[d_state, d_inner]), got d_state = {d_state}, d_inner = {d_inner}")
        self.in_features, self.dt_rank, self.d_state = d_inner, dt_rank, d_state
        self.token_dynamics = token_dynamics
        bound = d_inner ** -0.5  # nn.Linear's default range for the learned entries
        self.dt_weight = nn.Parameter(torch.empty(dt_rank, d_inner).uniform_(-bound, bound))
        self.upper = nn.Parameter(torch.empty(d_state, d_inner).uniform_(-bound, bound))
        self.scale = nn.Parameter(torch.zeros(d_state))  # |D_n| = softplus(0) + 0.7 = 1.39 at init
        self.register_buffer("signs", state_signs(token_dynamics, d_state), persistent=False)

    def triangular(self) -> torch.Tensor:
        """``P`` [N, d_inner]: 1 on the diagonal, 0 below it, ``upper`` above it."""
        eye = torch.eye(self.d_state, self.in_features, dtype=self.upper.dtype, device=self.upper.device)
        return torch.triu(self.upper, diagonal=1) + eye

    def diagonal(self) -> torch.Tensor:
        """``D`` [N] = signs * (softplus(scale) + 0.7)."""
        return self.signs.to(self.scale.dtype) * (F.softplus(self.scale) + SCALE_OFFSET)

    @property
    def weight(self) -> torch.Tensor:
        """The plain ``x_proj`` weight ``[W_dt; diag(D) P; P]`` [dt_rank + 2N, d_inner] (differentiable)."""
        p = self.triangular()
        return torch.cat([self.dt_weight, self.diagonal().unsqueeze(-1) * p, p])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u [..., d_inner] -> ``[dt, B, C]`` [..., dt_rank + 2N]."""
        return F.linear(u, self.weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, dt_rank={self.dt_rank}, d_state={self.d_state}, "
                f"token_dynamics={self.token_dynamics!r}")
