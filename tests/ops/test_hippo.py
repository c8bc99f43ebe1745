"""S4D's eigenvalue inits (``lrnn.ops.hippo``): the formulas, the LegS and PTD spectra against matrices
built here with numpy, the PTD disk cache and the argument checks. The layer that uses them is tested
in tests/layers/test_s4d_layer.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import lrnn.ops.hippo as hippo
from lrnn.ops import S4D_INITS, ptd_legs, s4d_eigenvalues


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test starts cold, on one thread: an empty PTD memory cache and a private cache directory."""
    monkeypatch.setenv("LRNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hippo, "_PTD_MEMORY", {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def numpy_legs(N: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS A and its normal part A + P P^T, written out from the formulas independently."""
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            if n > k:
                A[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                A[n, k] = -(n + 1)
    P = np.sqrt(np.arange(N) + 0.5)
    return A, A + np.outer(P, P)


def numpy_kappa(M: np.ndarray) -> tuple[float, np.ndarray]:
    w, V = np.linalg.eig(M)
    V = V / np.linalg.norm(V, axis=0)
    return float(np.linalg.cond(V)), w


def test_lin_inv_real_equal_their_formulas():
    """S4D-Lin ``-1/2 + i pi n``, S4D-Inv ``-1/2 + i (N/pi)(N/(2n+1) - 1)``, S4D-Real ``-(n+1)``."""
    N = 16
    n = np.arange(N // 2)
    expected = {"lin": -0.5 + 1j * np.pi * n, "inv": -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1),
                "real": -(n + 1.0) + 0j}
    for init, values in expected.items():
        np.testing.assert_allclose(s4d_eigenvalues(init, N).numpy(), values, rtol=1e-14, atol=0)


@pytest.mark.parametrize("init", S4D_INITS)
def test_every_init_gives_half_the_state_size_in_complex128(init):
    eig = s4d_eigenvalues(init, 16)
    assert eig.shape == (8,) and eig.dtype == torch.complex128 and (eig.real < 0).all()


@pytest.mark.parametrize("N", [8, 16, 64])
def test_legs_init_is_the_spectrum_of_the_normal_part_of_hippo_legs(N):
    """S4D-LegS == the eigenvalues (Im > 0) of A + P P^T built here, by numpy's general eigensolver; all
    of them have real part -1/2 (the normal part is -I/2 plus a skew-symmetric matrix)."""
    _, normal = numpy_legs(N)
    w = np.linalg.eigvals(normal)
    upper = np.sort_complex(w[w.imag > 0])
    ours = s4d_eigenvalues("legs", N).numpy()
    assert ours.shape == (N // 2,) and upper.shape == (N // 2,)
    np.testing.assert_allclose(np.sort(ours.imag), np.sort(upper.imag), rtol=1e-9)
    np.testing.assert_allclose(ours.real, -0.5, atol=1e-12)
    np.testing.assert_allclose(upper.real, -0.5, atol=1e-8)


@pytest.mark.parametrize("N", [16, 32, 64])
def test_ptd_lowers_the_eigenvector_condition_number_by_orders_of_magnitude(N):
    """Diagonalising HiPPO-LegS directly gives an eigenvector matrix with kappa >= 1e10 (numerically
    singular for N >= 32); after PTD it is below 1e3, at least 1e7 times smaller, with
    ``||E||_F / ||A||_F`` in the documented range [1e-3, 0.2] and a stable spectrum. Both condition
    numbers and the spectrum are re-measured here with numpy from the returned E."""
    A, _ = numpy_legs(N)
    result = ptd_legs(N)
    E = result.perturbation.numpy()
    kappa_direct, _ = numpy_kappa(A)
    kappa_ptd, w = numpy_kappa(A + E)
    assert kappa_direct >= 1e10
    assert kappa_ptd <= 1e3 and kappa_direct / kappa_ptd >= 1e7, (kappa_direct, kappa_ptd)
    assert math.isclose(kappa_ptd, result.condition_number, rel_tol=1e-3)
    ratio = np.linalg.norm(E) / np.linalg.norm(A)
    assert 1e-3 <= ratio <= 0.2 and math.isclose(ratio, result.perturbation_ratio, rel_tol=1e-9)
    assert w.real.max() < 0
    # The init is one eigenvalue per conjugate pair of A + E.
    eig = result.eigenvalues.numpy()
    assert eig.shape == (N // 2,) and (eig.imag >= 0).all()
    pairs = np.sort_complex(w[w.imag > 0])
    np.testing.assert_allclose(np.sort_complex(eig[eig.imag > 0]), pairs, rtol=1e-8)
    assert (eig.imag == 0).sum() * 2 == (w.imag == 0).sum()


def test_ptd_cache_is_written_atomically_and_read_back(tmp_path, monkeypatch):
    """The first call optimises and writes one JSON file (no temporary left); a fresh process (empty
    memory cache) reads it instead of optimising; a corrupt file is recomputed and rewritten."""
    first = ptd_legs(16, gamma=0.5, cache_dir=tmp_path)
    files = sorted(p.name for p in (tmp_path / "ptd").iterdir())
    assert len(files) == 1 and files[0].endswith(".json") and not files[0].startswith(".")
    monkeypatch.setattr(hippo, "_PTD_MEMORY", {})

    def no_optimising(*args):
        raise AssertionError("recomputed although the cache file exists")

    with monkeypatch.context() as m:
        m.setattr(hippo, "_optimise_ptd", no_optimising)
        again = ptd_legs(16, gamma=0.5, cache_dir=tmp_path)
    assert torch.equal(again.eigenvalues, first.eigenvalues)
    assert torch.equal(again.perturbation, first.perturbation)
    path = tmp_path / "ptd" / files[0]
    path.write_text("{not json")
    monkeypatch.setattr(hippo, "_PTD_MEMORY", {})
    recomputed = ptd_legs(16, gamma=0.5, cache_dir=tmp_path)
    assert torch.equal(recomputed.eigenvalues, first.eigenvalues)  # deterministic optimisation
    assert json.loads(path.read_text())["N"] == 16


def test_bad_ptd_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="gamma"):
        ptd_legs(16, gamma=-1.0)
    with pytest.raises(ValueError, match="d_state"):
        ptd_legs(15)
    with pytest.raises(ValueError, match="init"):
        s4d_eigenvalues("s4", 16)
