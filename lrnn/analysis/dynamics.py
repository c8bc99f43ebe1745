"""Token dynamics of selective SSMs (arXiv 2410.03292): the continuous-time system and its diagnosis.

A deep stack of S6 layers with residual connections and shared parameters, in the limit of many layers
(depth -> time ``t``), moves the tokens ``x_l`` (l = 1..L, each in R^d) by (``docs/token_dynamics.md`` derives it)::

    dx_l/dt = sum_{j<=l} sum_n C_l[n] B_j[n] * dt_j * prod_{k=j+1..l} a_k[:, n] * x_j      (per channel)
    B_j = S_B x_j   C_l = S_C x_l   dt_j = softplus(S_dt x_j + dt_bias)   a_k = exp(dt_k A)  (or 2 exp(dt_k A) - 1)

i.e. the right-hand side *is* one S6 scan with input ``x``, so ``token_velocity`` runs ``lrnn.ops.selective_scan``.
With one decay ``A = -a`` for every state the state sum collapses to ``x_l^T (S_C^T S_B) x_j``; every token's
own term is ``x_l^T M x_l`` for any ``A``, so the signs of the eigenvalues of the symmetric part of ``M = S_C^T S_B``
name the regime: negative -> tokens shrink (convergent), positive -> they grow (divergent), both -> mixed
(``docs/token_dynamics.md`` says what this proves and what it does not, also for the [-1, 1] range).
``interaction_matrix`` / ``spectrum`` compute it, ``integrate`` integrates the system with a float64 RK4,
``analyze_model`` does both for every Mamba (S6) layer of a ``LanguageModel``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lrnn.layers import Mamba
from lrnn.models import LanguageModel
from lrnn.ops import selective_scan

REGIMES = ("convergent", "divergent", "mixed", "none")
"""``regime`` of a spectrum: all non-zero eigenvalues negative / all positive / both signs / no non-zero one."""

DEFAULT_RTOL = 1e-6
"""Eigenvalues within ``rtol * max |eigenvalue|`` of 0 count as zero (M has rank <= d_state: most are 0)."""


def _float64(name: str, value: torch.Tensor | float, ndim: int | None = None) -> torch.Tensor:
    """``value`` as a finite float64 tensor (with ``ndim`` dimensions if given), else an error naming ``name``."""
    if not isinstance(value, (torch.Tensor, int, float, list, tuple)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a tensor, a (nested) list or a number, got {type(value).__name__}")
    tensor = torch.as_tensor(value, dtype=torch.float64)
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor


@dataclass(frozen=True)
class TokenSystem:
    """The shared parameters of the continuous-time token system, stored as float64.

    Attributes:
        S_B, S_C: [N, d], the maps from a token to its B and C (Mamba: rows of ``x_proj``).
        S_dt: [d, d] (a step size per channel, as Mamba) or [1, d] (one step size for every channel, the
            scalar-dt form of the paper's system).
        dt_bias: [d] or [1] (Mamba: ``dt_proj.bias``; 0 in the paper's system); a number is broadcast.
        A: [d, N], the continuous-time eigenvalues (<= 0). The constructor also takes a number ``-a`` or
            an [N] vector and broadcasts it.
        negative_eigenvalues: per-step decays ``2 exp(dt A) - 1`` in [-1, 1] instead of ``exp(dt A)``.
    """

    S_B: torch.Tensor
    S_C: torch.Tensor
    S_dt: torch.Tensor
    A: torch.Tensor | float
    dt_bias: torch.Tensor | float = 0.0
    negative_eigenvalues: bool = False

    def __post_init__(self) -> None:
        S_B, S_C, S_dt = (_float64(name, getattr(self, name), 2) for name in ("S_B", "S_C", "S_dt"))
        N, d = S_B.shape
        if S_C.shape != (N, d):
            raise ValueError(f"S_C must have the shape of S_B {(N, d)}, got {tuple(S_C.shape)}")
        if S_dt.shape not in ((d, d), (1, d)):
            raise ValueError(f"S_dt must have shape {(d, d)} or {(1, d)}, got {tuple(S_dt.shape)}")
        dt_bias = _float64("dt_bias", self.dt_bias)
        if dt_bias.ndim == 0:
            dt_bias = dt_bias.expand(S_dt.shape[0]).clone()
        if dt_bias.shape != (S_dt.shape[0],):
            raise ValueError(f"dt_bias must be a number or have shape {(S_dt.shape[0],)}, got {tuple(dt_bias.shape)}")
        A = _float64("A", self.A)
        if A.ndim > 2 or (A.ndim >= 1 and A.shape[-1] != N) or (A.ndim == 2 and A.shape[0] != d):
            raise ValueError(f"A must be a number, [N] = [{N}] or [d, N] = [{d}, {N}], got shape {tuple(A.shape)}")
        if (A > 0).any():
            raise ValueError(f"A must be <= 0 (decays of at most 1), got a maximum of {A.max().item()}")
        if not isinstance(self.negative_eigenvalues, bool):
            raise TypeError(f"negative_eigenvalues must be a bool, got {self.negative_eigenvalues!r}")
        for name, value in (("S_B", S_B), ("S_C", S_C), ("S_dt", S_dt), ("dt_bias", dt_bias),
                            ("A", A.expand(d, N).clone())):
            object.__setattr__(self, name, value)

    @property
    def d_state(self) -> int:
        return self.S_B.shape[0]

    @property
    def dim(self) -> int:
        return self.S_B.shape[1]


def interaction_matrix(system: TokenSystem) -> torch.Tensor:
    """``M = S_C^T S_B`` [d, d]: ``C_l^T B_j = x_l^T M x_j``, the bilinear form coupling token l to token j."""
    return system.S_C.T @ system.S_B


@dataclass(frozen=True)
class Spectrum:
    """The eigenvalues of the symmetric part ``(M + M^T) / 2`` (ascending) and their sign counts.

    ``x^T M x = x^T sym(M) x``, so only the symmetric part acts on a token's own size. Eigenvalues within
    ``tolerance`` of 0 count as zero.
    """

    eigenvalues: torch.Tensor
    tolerance: float

    @property
    def n_positive(self) -> int:
        return int((self.eigenvalues > self.tolerance).sum())

    @property
    def n_negative(self) -> int:
        return int((self.eigenvalues < -self.tolerance).sum())

    @property
    def n_zero(self) -> int:
        return self.eigenvalues.numel() - self.n_positive - self.n_negative

    @property
    def regime(self) -> str:
        """One of ``REGIMES``: negative only -> convergent, positive only -> divergent, both -> mixed."""
        positive, negative = self.n_positive > 0, self.n_negative > 0
        return {(False, True): "convergent", (True, False): "divergent", (True, True): "mixed"}.get(
            (positive, negative), "none")

    def to_dict(self) -> dict:
        values = self.eigenvalues.tolist()
        return {"regime": self.regime, "n_positive": self.n_positive, "n_negative": self.n_negative,
                "n_zero": self.n_zero, "tolerance": self.tolerance, "min": values[0], "max": values[-1],
                "trace": math.fsum(values), "eigenvalues": values}


def spectrum(matrix: torch.Tensor, rtol: float = DEFAULT_RTOL) -> Spectrum:
    """The ``Spectrum`` of the symmetric part of a square ``matrix``; zero means ``|lambda| <= rtol * max |lambda|``."""
    matrix = _float64("matrix", matrix, 2)
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1:
        raise ValueError(f"rtol must be a number in [0, 1), got {rtol!r}")
    eigenvalues = torch.linalg.eigvalsh((matrix + matrix.T) / 2)
    scale = eigenvalues.abs().max().item() if eigenvalues.numel() else 0.0
    return Spectrum(eigenvalues, rtol * scale)


# ---- the continuous-time system -------------------------------------------------------------------
def step_sizes(system: TokenSystem, x: torch.Tensor) -> torch.Tensor:
    """``dt = softplus(x S_dt^T + dt_bias)`` [..., L, d] (one column broadcast to d when ``S_dt`` is [1, d])."""
    return F.softplus(x @ system.S_dt.T + system.dt_bias).expand(x.shape)


def token_velocity(system: TokenSystem, x: torch.Tensor) -> torch.Tensor:
    """``dx/dt`` [L, d] (or [batch, L, d]) of the token system at tokens ``x`` of that shape (float64).

    One causal S6 scan over the tokens: ``h_l = a_l h_{l-1} + dt_l x_l B_l^T`` per channel, ``dx_l/dt = h_l C_l``.
    """
    if x.ndim not in (2, 3) or x.shape[-1] != system.dim:
        raise ValueError(f"x must be [L, d] or [batch, L, d] with d = {system.dim}, got shape {tuple(x.shape)}")
    batched = x.to(torch.float64) if x.ndim == 3 else x.to(torch.float64).unsqueeze(0)
    dt = step_sizes(system, batched)
    velocity, _ = selective_scan(dt * batched, dt, system.A, batched @ system.S_B.T, batched @ system.S_C.T,
                                 negative_eigenvalues=system.negative_eigenvalues)
    return velocity if x.ndim == 3 else velocity.squeeze(0)


@dataclass(frozen=True)
class Trajectory:
    """An integration toward ``t_end``: ``norms[k]`` [..., L] are the token norms at ``times[k]`` (increasing, from
    0); ``states[k]`` the tokens themselves when kept; ``blowup_time`` the time a norm left the finite range (None if
    none did). ``times[-1] < t_end`` without a blow-up means the step budget ran out."""

    t_end: float
    times: torch.Tensor
    norms: torch.Tensor
    states: torch.Tensor | None
    blowup_time: float | None


def relative_rate(x: torch.Tensor, velocity: torch.Tensor) -> float:
    """``max_l |dx_l/dt| / |x_l|``: the fastest relative change of a token (1 / time)."""
    return (velocity.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-300)).max().item()


def rk4(velocity: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, t_end: float, rel_step: float = 0.05,
        max_steps: int = 100_000, keep_states: bool = False, blowup: float = 1e12) -> Trajectory:
    """Integrate ``dx/dt = velocity(x)`` from ``x0`` [..., L, d] over [0, t_end] with classical RK4 steps.

    Each step is ``h = min(rel_step / relative_rate, t_end - t)``, so no token changes by more than about
    ``rel_step`` of itself per step: steps shrink toward a finite-time blow-up and grow geometrically while
    tokens decay like 1/sqrt(t) (a log-uniform time grid). Every step is recorded. Stops early when a token
    norm exceeds ``blowup`` times the largest initial norm or stops being finite, or after ``max_steps``.
    """
    if not (isinstance(t_end, (int, float)) and not isinstance(t_end, bool) and math.isfinite(t_end) and t_end > 0):
        raise ValueError(f"t_end must be a finite number > 0, got {t_end!r}")
    if not (isinstance(rel_step, (int, float)) and not isinstance(rel_step, bool) and 0 < rel_step <= 1):
        raise ValueError(f"rel_step must be a number in (0, 1], got {rel_step!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    x, t = x0.to(torch.float64), 0.0
    limit = blowup * max(x.norm(dim=-1).max().item(), 1e-300)
    times, norms, states, blowup_time = [t], [x.norm(dim=-1)], [x] if keep_states else None, None
    for _ in range(max_steps):
        if t >= t_end:
            break
        k1 = velocity(x)
        rate = relative_rate(x, k1)
        h = t_end - t if rate == 0 else min(rel_step / rate, t_end - t)
        if t + h == t:  # the step no longer moves the clock: a blow-up at t, to float64 resolution
            blowup_time = t
            break
        k2 = velocity(x + h / 2 * k1)
        k3 = velocity(x + h / 2 * k2)
        k4 = velocity(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t_end if h == t_end - t else t + h  # land on t_end exactly
        norm = x.norm(dim=-1)
        if not (torch.isfinite(norm).all() and norm.max().item() <= limit):
            blowup_time = t
            break
        times.append(t)
        norms.append(norm)
        if states is not None:
            states.append(x)
    return Trajectory(float(t_end), torch.tensor(times, dtype=torch.float64), torch.stack(norms),
                      None if states is None else torch.stack(states), blowup_time)


def integrate(system: TokenSystem, x0: torch.Tensor, t_end: float, rel_step: float = 0.05,
              max_steps: int = 100_000, keep_states: bool = False) -> Trajectory:
    """``rk4`` of the token system from tokens ``x0`` [L, d] or [batch, L, d]."""
    return rk4(lambda x: token_velocity(system, x), x0, t_end, rel_step, max_steps, keep_states)


def self_interaction(system: TokenSystem, x: torch.Tensor) -> torch.Tensor:
    """``x_l^T M x_l / |x_l|^2`` [..., L]: the sign of each token's own term in ``d|x_l|^2/dt``."""
    x = x.to(torch.float64)
    return ((x @ interaction_matrix(system)) * x).sum(-1) / (x * x).sum(-1).clamp_min(1e-300)


def natural_time(system: TokenSystem, x0: torch.Tensor) -> float:
    """``1 / relative_rate`` at ``x0``: about the time in which the fastest token first changes by itself
    (inf when nothing moves). A cubic blow-up ``x' = c x^3`` happens after half of it."""
    x0 = x0.to(torch.float64)
    rate = relative_rate(x0, token_velocity(system, x0))
    return math.inf if rate == 0 else 1.0 / rate


# ---- Mamba layers of a model ---------------------------------------------------------------------
def mamba_layers(model: LanguageModel) -> list[tuple[int, Mamba]]:
    """``(block index, mixer)`` of every Mamba (S6) layer of ``model``."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be an lrnn LanguageModel, got {type(model).__name__}")
    return [(i, block.mixer) for i, block in enumerate(model.layers) if isinstance(block.mixer, Mamba)]


def require_mamba_layers(model: LanguageModel) -> list[tuple[int, Mamba]]:
    """``mamba_layers(model)``, or a ValueError naming the model's mixers when it has none."""
    layers = mamba_layers(model)
    if not layers:
        raise ValueError(f"the model has no Mamba (S6) layer (its mixers: {sorted(set(model.config.layer_mixers()))})")
    return layers


def token_system(mixer: Mamba) -> TokenSystem:
    """The token system with one Mamba layer's parameters, in the layer's ``x_proj`` input space (d = d_inner).

    ``x_proj.weight`` [dt_rank + 2N, d_inner] stacks the rows ``[W_dt; W_B; W_C]``: S_B = W_B, S_C = W_C,
    ``S_dt = dt_proj.weight @ W_dt`` (rank dt_rank), ``dt_bias = dt_proj.bias``, ``A = -exp(A_log)``.
    """
    if not isinstance(mixer, Mamba):
        raise TypeError(f"mixer must be an lrnn Mamba (S6) layer, got {type(mixer).__name__}")
    with torch.no_grad():
        W_dt, W_B, W_C = torch.split(mixer.x_proj.weight.detach().double(),
                                     [mixer.dt_rank, mixer.d_state, mixer.d_state])
        return TokenSystem(S_B=W_B, S_C=W_C, S_dt=mixer.dt_proj.weight.detach().double() @ W_dt,
                           dt_bias=mixer.dt_proj.bias.detach().double(), A=-torch.exp(mixer.A_log.detach().double()),
                           negative_eigenvalues=mixer.negative_eigenvalues)


def x_proj_inputs(model: LanguageModel, input_ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """The input of every Mamba layer's ``x_proj`` on ``input_ids`` [T] (one forward pass): block index ->
    [T, d_inner] float64, i.e. ``silu(conv(in_proj_x(norm(h))))`` of that block's hidden input ``h``."""
    layers = mamba_layers(model)
    ids = torch.as_tensor(input_ids)
    if ids.ndim != 1 or ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty 1-D sequence of token ids, got shape {tuple(ids.shape)}")
    captured: dict[int, torch.Tensor] = {}
    hooks = [mixer.x_proj.register_forward_hook(
        lambda _module, inputs, _output, index=index: captured.__setitem__(index, inputs[0][0].detach().double()))
        for index, mixer in layers]
    try:
        with torch.no_grad():
            model(ids.unsqueeze(0).long())
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@dataclass(frozen=True)
class LayerDynamics:
    """One Mamba layer's diagnosis: the spectrum of sym(S_C^T S_B), each prompt token's ``self_interaction``,
    and the token norms of the continuous-time system started from the layer's ``x_proj`` inputs."""

    layer: int
    d_inner: int
    d_state: int
    negative_eigenvalues: bool
    spectrum: Spectrum
    self_interaction: torch.Tensor
    trajectory: Trajectory

    def summary(self) -> str:
        """One line: the sign counts and extreme eigenvalues, the regime, and what the token norms did."""
        spec, trajectory = self.spectrum, self.trajectory
        ratio = trajectory.norms[-1] / trajectory.norms[0].clamp_min(1e-300)
        reached = trajectory.times[-1].item()
        if trajectory.blowup_time is not None:
            end = f"{trajectory.blowup_time:.3g} (blow-up)"
        else:
            end = f"{reached:.3g}" + ("" if reached == trajectory.t_end else
                                      f" (step budget spent; t_end {trajectory.t_end:.3g})")
        positive = int((self.self_interaction > 0).sum())
        return (f"layer {self.layer} (d_inner {self.d_inner}, d_state {self.d_state}"
                f"{', [-1, 1]' if self.negative_eigenvalues else ''}): "
                f"{spec.n_positive} positive (max {spec.eigenvalues[-1].item():.3g}), "
                f"{spec.n_negative} negative (min {spec.eigenvalues[0].item():.3g}), {spec.n_zero} zero -> "
                f"{spec.regime}; tokens with x^T M x > 0: {positive}/{self.self_interaction.numel()}; "
                f"|x_l(t)| / |x_l(0)| at t = {end}: min {ratio.min().item():.3g}, max {ratio.max().item():.3g}")

    def to_dict(self) -> dict:
        first, last = self.trajectory.norms[0], self.trajectory.norms[-1]
        return {"layer": self.layer, "d_inner": self.d_inner, "d_state": self.d_state,
                "negative_eigenvalues": self.negative_eigenvalues, "spectrum": self.spectrum.to_dict(),
                "self_interaction": self.self_interaction.tolist(),
                "trajectory": {"t_end": self.trajectory.t_end, "blowup_time": self.trajectory.blowup_time,
                               "times": self.trajectory.times.tolist(),
                               "norms": self.trajectory.norms.T.tolist(),  # [token][time]
                               "norm_ratio": (last / first.clamp_min(1e-300)).tolist()}}


def analyze_model(model: LanguageModel, input_ids: torch.Tensor, horizon: float = 1e4, rel_step: float = 0.05,
                  max_steps: int = 2000, rtol: float = DEFAULT_RTOL) -> list[LayerDynamics]:
    """Diagnose every Mamba (S6) layer of ``model`` on the prompt ``input_ids`` [T].

    Each layer's system starts from that layer's ``x_proj`` inputs on the prompt and runs for ``horizon``
    natural times (``natural_time``) with ``rk4``'s ``rel_step`` and ``max_steps``. ValueError if the model has
    no Mamba layer.
    """
    if not (isinstance(horizon, (int, float)) and not isinstance(horizon, bool) and 0 < horizon < math.inf):
        raise ValueError(f"horizon must be a finite number > 0, got {horizon!r}")
    layers = require_mamba_layers(model)
    inputs = x_proj_inputs(model, input_ids)
    results = []
    for index, mixer in layers:
        system, x0 = token_system(mixer), inputs[index]
        scale = natural_time(system, x0)
        t_end = horizon * (1.0 if math.isinf(scale) else scale)
        results.append(LayerDynamics(index, mixer.d_inner, mixer.d_state, mixer.negative_eigenvalues,
                                     spectrum(interaction_matrix(system), rtol), self_interaction(system, x0),
                                     integrate(system, x0, t_end, rel_step, max_steps)))
    return results
