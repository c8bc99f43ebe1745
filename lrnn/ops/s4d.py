"""Linear time-invariant diagonal SSM (S4D): discretisation, convolution kernel, FFT and recurrent paths.

Per channel h and mode m (M = N/2 complex modes, the other half of the spectrum is the complex
conjugate and is folded into ``2 Re``)::

    x_t = Abar x_{t-1} + Bbar u_t          y_t = 2 Re(sum_m C_m x_{t,m}) + D u_t

which, from ``x_{-1} = x0``, is the causal convolution ``y = K * u + D u`` plus the free response::

    K_l = 2 Re(sum_m C_m Bbar_m Abar_m^l)      y_t += 2 Re(sum_m C_m Abar_m^(t+1) x0_m)

``mode="chunk"`` builds K (O(N L)) and convolves with an FFT of length 2L (O(L log L)); ``mode="recurrent"``
runs the recurrence (O(N) per token, the decoding step). Both agree to rounding.

Packed documents (``seq_starts``): the recurrence resets the state to zero at each document's first
token; a convolution cannot reset, so the FFT path moves each document into a row of its own
(right-aligned, the left padding masked), convolves those rows, and gathers the outputs back.
"""

from __future__ import annotations

import torch

from lrnn.ops._checks import MODES, check_seq_starts
from lrnn.ops.conv import steps_since_start

DISCRETIZATIONS = ("zoh", "bilinear")


def _complex_dtype(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64


def _expm1_complex(z: torch.Tensor) -> torch.Tensor:
    """``exp(z) - 1`` without cancellation for small |z| (torch.expm1 has no complex support).

    With z = a + ib: ``exp(z) - 1 = expm1(a) cos b - 2 sin^2(b/2) + i exp(a) sin b``.
    """
    a, b = z.real, z.imag
    real = torch.expm1(a) * torch.cos(b) - 2.0 * torch.sin(0.5 * b) ** 2
    return torch.complex(real, torch.exp(a) * torch.sin(b))


def s4d_discretize(A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor,
                   discretization: str = "zoh") -> tuple[torch.Tensor, torch.Tensor]:
    """(log Abar, Bbar), each complex [H, M], from continuous A, B [H, M] (complex) and dt [H] (> 0).

    ZOH: ``Abar = exp(dt A)``, ``Bbar = (exp(dt A) - 1) / A * B``.
    Bilinear: ``Abar = (1 + dt A / 2) / (1 - dt A / 2)``, ``Bbar = dt / (1 - dt A / 2) * B``.
    ``log Abar`` is returned instead of Abar so that powers ``Abar^l = exp(l log Abar)`` need no products.
    """
    dta = dt.unsqueeze(-1) * A
    if discretization == "zoh":
        return dta, _expm1_complex(dta) / A * B
    if discretization == "bilinear":
        half = 0.5 * dta
        # log((1 + z) / (1 - z)) as a difference of logs keeps precision when |z| is small.
        return torch.log1p(half) - torch.log1p(-half), dt.unsqueeze(-1) / (1.0 - half) * B
    raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")


def discretized(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt: torch.Tensor,
                discretization: str, initial_state: torch.Tensor | None):
    """(log Abar, Bbar, C, x0, u) in the compute dtypes of the S4D ops: real float32 at least, float64 when
    u or the parameters are float64, complex to match (x0 None stays None)."""
    real = torch.promote_types(torch.promote_types(u.dtype, torch.float32),
                               torch.promote_types(dt.dtype, A.real.dtype))
    cplx = _complex_dtype(real)
    log_abar, bbar = s4d_discretize(A.to(cplx), B.to(cplx), dt.to(real), discretization)
    x0 = None if initial_state is None else initial_state.to(cplx)
    return log_abar, bbar, C.to(cplx), x0, u.to(real)


def vandermonde(log_abar: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """``Abar^(l + offset)`` for l = 0..length-1: complex [H, M, length] from log Abar [H, M]."""
    steps = torch.arange(offset, offset + length, device=log_abar.device, dtype=log_abar.real.dtype)
    # exp(l (a + ib)) = e^(l a) (cos lb + i sin lb): torch.polar runs the real vectorised exp, cos and sin,
    # 3-4x faster on the CPU than the complex exp (which is what it computes).
    log_abar = log_abar.unsqueeze(-1)
    return torch.polar(torch.exp(log_abar.real * steps), log_abar.imag * steps)


def s4d_kernel(log_abar: torch.Tensor, cb: torch.Tensor, length: int) -> torch.Tensor:
    """Convolution kernel ``K_l = 2 Re(sum_m cb_m Abar_m^l)``, real [H, length]; cb = C * Bbar [H, M].

    Blocked powers: with l = R q + r (R = sqrt(length), rounded), ``Abar^l = Abar^(R q) Abar^r``, so
    ``K_{Rq+r} = 2 Re(sum_m (cb_m Abar_m^(Rq)) Abar_m^r)`` is one complex matrix product [H, Q, M] @ [H, M, R]
    from 2 sqrt(length) exponentials per mode, instead of ``length`` complex exponentials per mode (the
    [H, M, length] Vandermonde matrix took most of an S4D training step) and an elementwise product.
    """
    if length <= 0:
        return log_abar.real.new_zeros(log_abar.shape[0], 0)
    block = max(1, int(length ** 0.5 + 0.5))
    blocks = -(-length // block)
    within = vandermonde(log_abar, block)  # Abar^r, [H, M, R]
    starts = vandermonde(log_abar * block, blocks)  # Abar^(R q), [H, M, Q]
    kernel = (cb.unsqueeze(-1) * starts).transpose(-1, -2) @ within  # [H, Q, R]: K at l = R q + r
    return 2.0 * kernel.real.flatten(-2)[..., :length]


def fft_conv(u: torch.Tensor, kernel: torch.Tensor, anticausal: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel convolution of u [B, T, H] with kernel [H, T] by an FFT of length 2T (no wrap-around).

    Causal: ``y_t = sum_{s<=t} K_{t-s} u_s``. With ``anticausal`` [H, T] (the bidirectional mode) also
    ``+ sum_{s>t} K'_{s-t-1} u_s``: K' sits, reversed, at the negative lags -T..-1 of the circular kernel.
    """
    t = u.shape[1]
    n = 2 * t
    full = torch.nn.functional.pad(kernel, (0, t))
    if anticausal is not None:
        full = full + torch.nn.functional.pad(anticausal.flip(-1), (t, 0))
    spectrum = torch.fft.rfft(u.transpose(1, 2), n=n) * torch.fft.rfft(full, n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :t].transpose(1, 2)


def _check_inputs(u, A, B, C, dt, D, initial_state, mask, mode, discretization) -> None:
    if not isinstance(u, torch.Tensor) or u.ndim != 3 or not u.is_floating_point():
        got = f"shape {tuple(u.shape)}, dtype {u.dtype}" if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be a floating-point tensor [batch, time, channels], got {got}")
    b, _, h = u.shape
    for name, x in (("A", A), ("B", B), ("C", C)):
        if not isinstance(x, torch.Tensor) or not x.is_complex() or x.ndim != 2 or x.shape[0] != h:
            got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a complex tensor [channels={h}, modes], got {got}")
    if not (A.shape == B.shape == C.shape):
        raise ValueError(f"A, B, C must share one shape [channels, modes], got {tuple(A.shape)}, "
                         f"{tuple(B.shape)}, {tuple(C.shape)}")
    if not isinstance(dt, torch.Tensor) or tuple(dt.shape) != (h,):
        raise ValueError(f"dt must be a tensor [channels={h}], got {getattr(dt, 'shape', type(dt).__name__)}")
    if D is not None and tuple(D.shape) != (h,):
        raise ValueError(f"D must be a tensor [channels={h}], got shape {tuple(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (b, *A.shape):
        raise ValueError(f"initial_state must have shape [batch, channels, modes] = {(b, *A.shape)}, "
                         f"got {tuple(initial_state.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(u.shape[:2]):
        raise ValueError(f"mask must have shape [batch, time] = {tuple(u.shape[:2])}, got {tuple(mask.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")


def s4d_scan(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt: torch.Tensor,
             D: torch.Tensor | None = None, discretization: str = "zoh",
             initial_state: torch.Tensor | None = None, output_final_state: bool = False,
             mode: str = "chunk", mask: torch.Tensor | None = None,
             C_anticausal: torch.Tensor | None = None,
             seq_starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the diagonal LTI SSM over u [B, T, H]; returns (y [B, T, H], final state [B, H, M] or None).

    A, B, C: complex [H, M] (continuous-time, M modes standing for M conjugate pairs); dt [H] > 0;
    D [H]; ``initial_state`` complex [B, H, M]. The math runs in float32 at least and in float64 when u
    or the parameters are float64; y has u's dtype, the state the complex compute dtype.
    ``mask`` [B, T] (False = padding): padded steps are identity steps (state kept, input ignored). The
    recurrent path allows any mask; the FFT path assumes left padding (all padding before the first
    real token of a row), the case of padded prompts. ``C_anticausal`` [H, M] adds the anti-causal
    kernel of a bidirectional layer (FFT path only, no state).
    ``seq_starts`` [B, T] (bool, True at each packed document's first token): the state is reset to zero
    there, so each document runs as if alone (``initial_state`` reaches only a first document whose first
    token is not flagged; the final state is the last document's). The FFT path then convolves a
    [documents, longest document, H] copy of the input. Not combined with ``mask``.
    """
    _check_inputs(u, A, B, C, dt, D, initial_state, mask, mode, discretization)
    if seq_starts is not None:
        check_seq_starts(seq_starts, u.shape[0], u.shape[1], u)
        if mask is not None:
            raise ValueError("s4d_scan takes a padding mask or seq_starts (packed documents), not both")
    log_abar, bbar, C, x0, uw = discretized(u, A, B, C, dt, discretization, initial_state)
    real = uw.dtype
    if mask is not None:
        mask = mask.bool()
        uw = uw * mask.unsqueeze(-1).to(real)
    if C_anticausal is not None and (mode != "chunk" or x0 is not None or output_final_state):
        raise ValueError("an anti-causal (bidirectional) kernel needs mode='chunk' and no state")
    if mode == "recurrent":
        y, final = _recurrent(uw, log_abar, bbar, C, x0, mask, seq_starts)
    elif seq_starts is not None and uw.shape[1] > 0:
        y, final = _document_convolution(uw, log_abar, bbar, C, x0, seq_starts, output_final_state, C_anticausal)
    else:
        y, final = _convolution(uw, log_abar, bbar, C, x0, mask, output_final_state, C_anticausal)
    if D is not None:
        y = y + uw * D.to(real)
    return y.to(u.dtype), (final if output_final_state else None)


def _recurrent(u, log_abar, bbar, C, x0, mask, seq_starts=None):
    """Sequential reference / decode step: ``x = Abar x + Bbar u_t``, ``y_t = 2 Re(C x)`` (x = 0 before a
    document start)."""
    b, t, h = u.shape
    abar = torch.exp(log_abar)
    x = x0 if x0 is not None else torch.zeros(b, *abar.shape, dtype=abar.dtype, device=u.device)
    outputs = []
    for i in range(t):
        if seq_starts is not None:
            x = torch.where(seq_starts[:, i, None, None], torch.zeros((), dtype=x.dtype, device=x.device), x)
        new = abar * x + bbar * u[:, i, :, None]
        x = new if mask is None else torch.where(mask[:, i, None, None], new, x)
        outputs.append(2.0 * (C * x).sum(-1).real)
    y = torch.stack(outputs, dim=1) if outputs else u.new_zeros(b, 0, h)
    return y, x


def _convolution(u, log_abar, bbar, C, x0, mask, output_final_state, C_anticausal):
    """FFT path: ``y = K * u`` plus the free response of x0; the final state from the same powers."""
    b, t, h = u.shape
    kernel = s4d_kernel(log_abar, C * bbar, t)
    anti = None if C_anticausal is None else s4d_kernel(log_abar, C_anticausal.to(C.dtype) * bbar, t)
    # Every power Abar^l (l < T) is needed only for the free response of x0 and for the final state.
    powers = vandermonde(log_abar, t) if (x0 is not None and mask is None) or output_final_state else None
    y = fft_conv(u, kernel, anti) if t else u.new_zeros(b, 0, h)
    # Steps each position has taken from x0: t + 1, or the count of real tokens so far with a mask.
    steps = None if mask is None else torch.cumsum(mask.to(u.dtype), dim=1)
    if x0 is not None and t:
        if steps is None:
            free = torch.einsum("hml,bhm->blh", C.unsqueeze(-1) * powers * torch.exp(log_abar).unsqueeze(-1), x0)
        else:  # per-row exponents: [B, T, H, M]
            decay = torch.exp(steps[:, :, None, None] * log_abar)
            free = torch.einsum("bthm,bhm->bth", decay * C, x0)
        y = y + 2.0 * free.real
    final = None
    if output_final_state:
        # x_T = Abar^n x0 + sum_s Abar^(T-1-s) Bbar u_s (padded u are zero; left padding keeps the
        # real tokens last, so their distances to the end are unchanged).
        final = bbar * torch.einsum("bth,hmt->bhm", u.to(powers.dtype), powers.flip(-1))
        if x0 is not None:
            if steps is not None and t:
                n = steps[:, -1]
            else:
                n = torch.full((b,), float(t), dtype=u.dtype, device=u.device)
            final = final + torch.exp(n[:, None, None] * log_abar) * x0
    return y, final


def _document_convolution(u, log_abar, bbar, C, x0, seq_starts, output_final_state, C_anticausal):
    """The FFT path over packed documents: each document of u [B, T, H] becomes a row of its own,
    right-aligned in [N, L, H] (N documents, L the longest) behind masked left padding, which the FFT
    path handles exactly; the row's first document keeps x0 unless its first token is flagged."""
    h = u.shape[-1]
    first = torch.ones_like(seq_starts[:, :1])
    starts = torch.cat([first, seq_starts[:, 1:]], dim=1)  # the row start begins a document too
    per_row = starts.sum(1)  # documents per row [B]
    row_offset = torch.cumsum(per_row, 0) - per_row  # the index of each row's first document [B]
    doc = row_offset[:, None] + torch.cumsum(starts.long(), 1) - 1  # each token's document [B, T]
    lengths = torch.bincount(doc.flatten(), minlength=int(per_row.sum()))  # [N]
    longest = int(lengths.max())
    column = longest - lengths[doc] + steps_since_start(starts)  # right-aligned place in the document's row
    n = lengths.shape[0]
    rows = u.new_zeros(n, longest, h).index_put((doc, column), u)
    real = torch.zeros(n, longest, dtype=torch.bool, device=u.device).index_put(
        (doc, column), torch.ones_like(seq_starts))
    x0_rows = None
    if x0 is not None:  # only a first document that is not flagged continues the given state
        keep = (~seq_starts[:, :1]).to(x0.real.dtype)[:, :, None]  # [B, 1, 1]
        x0_rows = x0.new_zeros(n, *x0.shape[1:]).index_put((row_offset,), x0 * keep)
    y_rows, final_rows = _convolution(rows, log_abar, bbar, C, x0_rows, real, output_final_state, C_anticausal)
    final = None if final_rows is None else final_rows[row_offset + per_row - 1]
    return y_rows[doc, column], final
