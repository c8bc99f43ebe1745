"""Comparison helpers for checking a fast path against a reference (used by lrnn's own tests)."""

from __future__ import annotations

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_F / ||expected||_F`` (the relative RMSE), computed in float64.

    Both tensors zero counts as no error; a zero reference with a non-zero ``actual`` gives inf.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: actual {tuple(actual.shape)} vs expected {tuple(expected.shape)}")
    a, b = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    num, den = torch.linalg.vector_norm(a - b).item(), torch.linalg.vector_norm(b).item()
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Raise AssertionError unless ``actual`` is finite and ``relative_error(actual, expected) <= tol``."""
    if not bool(torch.isfinite(actual).all()):
        raise AssertionError(f"{what}: non-finite values")
    err = relative_error(actual, expected)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.0e}")
