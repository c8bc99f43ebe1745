"""Eigenvalue inits of S4D: HiPPO-LegS, the diagonal inits (Lin, Inv, LegS, Real) and PTD with its disk cache.

Functional float64 math beneath the S4D layer (``lrnn.layers.s4d`` builds its A from ``s4d_eigenvalues``).

Every init returns M = N/2 complex eigenvalues (complex128 [M]); each stands for a conjugate pair, the
S4D layer's ``2 Re`` supplies the other half of the spectrum.

* ``lin``:  ``A_n = -1/2 + i pi n``
* ``inv``:  ``A_n = -1/2 + i (N / pi) (N / (2n + 1) - 1)``
* ``legs``: the eigenvalues of the normal part of HiPPO-LegS, ``A + P P^T`` (all ``-1/2 + i w``)
* ``real``: ``A_n = -(n + 1)``
* ``ptd``:  perturb-then-diagonalize (arXiv 2310.01698): the eigenvalues of ``A_LegS + E`` with the
  perturbation E chosen to make the eigenvector matrix well conditioned (see ``ptd_legs``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lrnn.atomic import atomic_write_text
from lrnn.paths import default_cache_dir
from lrnn.validation import check_int, check_number

__all__ = ["S4D_INITS", "PTD_VERSION", "PTDResult", "check_state_size", "hippo_legs", "legs_normal_part",
           "legs_eigenvalues", "s4d_eigenvalues", "eigenvector_condition", "ptd_legs"]

S4D_INITS = ("legs", "lin", "inv", "real", "ptd")
"""The names ``s4d_eigenvalues`` accepts."""
PTD_VERSION = 1  # bump when the optimisation changes: old cache files are then ignored

_log = logging.getLogger(__name__)
_PTD_MEMORY: dict[tuple, "PTDResult"] = {}


def check_state_size(N: object) -> int:
    """N must be an even int >= 2 (N/2 conjugate-pair modes)."""
    check_int("d_state (N)", N, 2)
    if N % 2:
        raise ValueError(f"d_state (N) must be an even int >= 2 (N/2 conjugate-pair modes), got {N}")
    return N


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS ``(A [N, N], P [N], B [N])`` in float64, for ``x' = A x + B u``.

    ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` (n > k), ``A_nn = -(n+1)``, 0 above the diagonal;
    ``B_n = sqrt(2n+1)``; ``P_n = sqrt(n + 1/2)`` makes ``A + P P^T`` normal (-1/2 I plus skew).
    """
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, torch.sqrt(n + 0.5), r.clone()


def legs_normal_part(N: int) -> torch.Tensor:
    """``A + P P^T`` of HiPPO-LegS, float64 [N, N]: ``-1/2 I`` plus a skew-symmetric matrix."""
    A, P, _ = hippo_legs(N)
    return A + P[:, None] * P[None, :]


def _upper_half(eigenvalues: torch.Tensor) -> torch.Tensor:
    """One eigenvalue per conjugate pair of a real N x N matrix's spectrum -> complex128 [N/2].

    Pairs contribute their member with Im > 0. Real eigenvalues (exactly real from LAPACK for a real
    matrix; there is an even number r of them when N is even) contribute every other one in order of
    real part, r/2 in all: a real mode counted twice by ``2 Re`` (documented in docs/s4d.md).
    """
    pairs = eigenvalues[eigenvalues.imag > 0]
    real = torch.sort(eigenvalues[eigenvalues.imag == 0].real).values[::2].to(eigenvalues.dtype)
    chosen = torch.cat([pairs, real])
    order = torch.argsort(chosen.imag * 1e6 + chosen.real)  # by frequency, then decay (deterministic)
    return chosen[order]


def legs_eigenvalues(N: int) -> torch.Tensor:
    """S4D-LegS: eigenvalues of the normal part of HiPPO-LegS, ``-1/2 + i w`` with w > 0, complex128 [N/2].

    The skew part S = A + P P^T + I/2 is diagonalised as the Hermitian matrix -iS (eigvalsh: exact
    conjugate pairs +-w, no non-normal error)."""
    check_state_size(N)
    S = legs_normal_part(N) + 0.5 * torch.eye(N, dtype=torch.float64)
    w = torch.linalg.eigvalsh(-1j * S.to(torch.complex128))  # ascending, symmetric about 0
    w = w[N // 2:]
    return torch.complex(torch.full_like(w, -0.5), w)


def s4d_eigenvalues(init: str, N: int, ptd_gamma: float = 1.0) -> torch.Tensor:
    """The N/2 diagonal entries of A (complex128 [N/2]) for ``init`` in ``S4D_INITS``."""
    check_state_size(N)
    M = N // 2
    n = torch.arange(M, dtype=torch.float64)
    if init == "lin":
        return torch.complex(torch.full_like(n, -0.5), math.pi * n)
    if init == "inv":
        return torch.complex(torch.full_like(n, -0.5), (N / math.pi) * (N / (2 * n + 1) - 1))
    if init == "real":
        return torch.complex(-(n + 1), torch.zeros_like(n))
    if init == "legs":
        return legs_eigenvalues(N)
    if init == "ptd":
        return ptd_legs(N, ptd_gamma).eigenvalues
    raise ValueError(f"init must be one of {S4D_INITS}, got {init!r}")


# ---- PTD ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PTDResult:
    """Outcome of ``ptd_legs``.

    eigenvalues: complex128 [N/2] (one per conjugate pair, see ``_upper_half``).
    condition_number: 2-norm condition number of the (unit-column) eigenvector matrix of A + E.
    direct_condition_number: the same for A itself (diagonalising HiPPO-LegS directly).
    perturbation_ratio: ``||E||_F / ||A||_F``.
    max_real: the largest real part of the spectrum of A + E (< 0: stable).
    perturbation: E, float64 [N, N].
    """

    N: int
    gamma: float
    eigenvalues: torch.Tensor
    condition_number: float
    direct_condition_number: float
    perturbation_ratio: float
    max_real: float
    perturbation: torch.Tensor


def eigenvector_condition(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(kappa_2(V), eigenvalues) of ``matrix = V diag(lambda) V^-1`` with unit-norm columns of V.

    Unit columns are within a factor sqrt(N) of the best column scaling (van der Sluis), and the value
    is invariant to the eigenvectors' phases, so it is differentiable through ``torch.linalg.eig``
    while the eigenvalues are distinct."""
    eigenvalues, V = torch.linalg.eig(matrix)
    s = torch.linalg.svdvals(V)
    return s[0] / s[-1], eigenvalues


def ptd_legs(N: int, gamma: float = 1.0, steps: int = 150, seed: int = 0,
             cache: bool = True, cache_dir: str | Path | None = None) -> PTDResult:
    """Perturb-then-diagonalize HiPPO-LegS: eigenvalues of ``A + E`` with a well-conditioned V.

    E (real N x N) minimises ``kappa(V(A + E)) + gamma ||E||_F + 100 * sum relu(Re lambda + 1/2)^2``:
    the paper's objective plus a hinge that keeps the spectrum in Re <= -1/2 (the normal part's real
    parts), since large perturbations of the highly non-normal A push eigenvalues into the right
    half-plane. Method: E starts as a seeded Gaussian with ``||E||_F = 1e-3 ||A||_F``, then ``steps``
    Adam steps on the log of the objective (gradients through ``torch.linalg.eig``); the best iterate
    with a stable spectrum is kept. Deterministic for given (N, gamma, steps, seed).

    Results are cached in memory and, with ``cache=True``, on disk as JSON under
    ``cache_dir or default_cache_dir()`` / ``ptd`` (atomic writes; an unreadable file is recomputed).
    """
    check_state_size(N)
    if math.isinf(check_number("gamma", gamma, 0)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    check_int("steps", steps, 1)
    key = (N, float(gamma), steps, seed)
    if key in _PTD_MEMORY:
        return _PTD_MEMORY[key]
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / "ptd" / f"legs-N{N}-gamma{float(gamma)!r}-steps{steps}-seed{seed}-v{PTD_VERSION}.json"
    result = _read_cached(path) if cache else None
    if result is None:
        result = _optimise_ptd(N, float(gamma), steps, seed)
        if cache:
            _write_cached(path, result)
    _PTD_MEMORY[key] = result
    return result


def _ptd_objective(A: torch.Tensor, E: torch.Tensor, gamma: float):
    kappa, eigenvalues = eigenvector_condition(A + E)
    unstable = torch.relu(eigenvalues.real + 0.5).pow(2).sum()
    return kappa + gamma * torch.linalg.matrix_norm(E) + 100.0 * unstable, kappa, eigenvalues


def _optimise_ptd(N: int, gamma: float, steps: int, seed: int) -> PTDResult:
    A, _, _ = hippo_legs(N)
    norm_a = torch.linalg.matrix_norm(A)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # N <= a few hundred: one thread is fastest and spares shared machines
    try:
        with torch.enable_grad():
            gen = torch.Generator().manual_seed(seed)
            E = torch.randn(N, N, dtype=torch.float64, generator=gen)
            E = (E * (1e-3 * norm_a / torch.linalg.matrix_norm(E))).requires_grad_()
            optimiser = torch.optim.Adam([E], lr=1e-2 * norm_a.item() / N)
            best = None
            for _ in range(steps + 1):
                loss, kappa, eigenvalues = _ptd_objective(A, E, gamma)
                stable = eigenvalues.real.max().item() < 0
                if stable and (best is None or loss.item() < best[0]):
                    best = (loss.item(), E.detach().clone())
                optimiser.zero_grad()
                torch.log(loss).backward()
                optimiser.step()
        if best is None:
            raise RuntimeError(f"PTD found no stable perturbation for N={N}, gamma={gamma}")
        E = best[1]
        kappa, eigenvalues = eigenvector_condition(A + E)
        direct, _ = eigenvector_condition(A)
    finally:
        torch.set_num_threads(threads)
    return PTDResult(N=N, gamma=gamma, eigenvalues=_upper_half(eigenvalues),
                     condition_number=kappa.item(), direct_condition_number=direct.item(),
                     perturbation_ratio=(torch.linalg.matrix_norm(E) / norm_a).item(),
                     max_real=eigenvalues.real.max().item(), perturbation=E)


def _read_cached(path: Path) -> PTDResult | None:
    try:
        data = json.loads(path.read_text())
        eig = torch.complex(torch.tensor(data["eigenvalues_real"], dtype=torch.float64),
                            torch.tensor(data["eigenvalues_imag"], dtype=torch.float64))
        fields = {k: data[k] for k in ("N", "gamma", "condition_number", "direct_condition_number",
                                      "perturbation_ratio", "max_real")}
        E = torch.tensor(data["perturbation"], dtype=torch.float64)
        if eig.shape != (fields["N"] // 2,) or E.shape != (fields["N"], fields["N"]):
            raise ValueError("eigenvalue count or perturbation shape")
        return PTDResult(eigenvalues=eig, perturbation=E, **fields)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:  # corrupt or foreign file: recompute
        _log.warning("ignoring unreadable PTD cache file %s (%s)", path, err)
        return None


def _write_cached(path: Path, result: PTDResult) -> None:
    data = {k: v for k, v in asdict(result).items() if k not in ("eigenvalues", "perturbation")}
    data["perturbation"] = result.perturbation.tolist()
    data["eigenvalues_real"] = result.eigenvalues.real.tolist()
    data["eigenvalues_imag"] = result.eigenvalues.imag.tolist()
    try:
        atomic_write_text(path, json.dumps(data))
    except OSError as err:  # a read-only home is no reason to fail: the result is still in memory
        _log.warning("could not write the PTD cache file %s (%s)", path, err)
