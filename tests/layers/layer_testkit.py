"""Shared helpers for the mixer tests: error metric, seeded builders and the table of mixer variants.

Kept in a uniquely named module rather than in ``conftest.py``: the ``tests/ops`` tests do
``from conftest import ...``, and a second ``conftest`` module on the path would shadow theirs whenever
both directories are passed to pytest on one command line.

Every builder takes an explicit ``seed`` and runs under ``torch.random.fork_rng``, so a test's layer and
inputs do not depend on which tests ran before it, and the global RNG is left untouched.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import MIXERS, RECURRENT_MIXERS
from lrnn.testing import assert_relative_close as assert_close, relative_error as rel_err

F64 = torch.float64
F32 = torch.float32

# Acceptance tolerances (relative error ||a - b||_F / ||b||_F).
TOL = {F64: 1e-10, F32: 1e-4}

D_MODEL = 16

# One entry per mixer variant: (mixer name, constructor kwargs). Small chunk sizes make sequences of a
# few dozen tokens span several chunks, including a partial last one.
MIXER_VARIANTS: dict[str, tuple[str, dict]] = {
    "mamba": ("mamba", dict(d_state=4, chunk_size=8)),
    "mamba2": ("mamba2", dict(d_state=8, headdim=8, chunk_size=8)),
    "mamba2-ngroups2": ("mamba2", dict(d_state=8, headdim=8, ngroups=2, chunk_size=8)),
    "mamba2-D_has_hdim": ("mamba2", dict(d_state=8, headdim=8, D_has_hdim=True, chunk_size=8)),
    "mamba2-no_rmsnorm": ("mamba2", dict(d_state=8, headdim=8, rmsnorm=False, chunk_size=8)),
    "mamba2-norm_before_gate": ("mamba2", dict(d_state=8, headdim=8, norm_before_gate=True, chunk_size=8)),
    # dt is initialised in [1e-3, 0.1]: this limit clamps it on both sides.
    "mamba2-dt_limit": ("mamba2", dict(d_state=8, headdim=8, dt_limit=(0.01, 0.05), chunk_size=8)),
    "deltanet": ("deltanet", dict(num_heads=2, chunk_size=8)),
    "deltanet-default_chunk": ("deltanet", dict(num_heads=2)),
    "deltanet-no_conv-expand_v2": ("deltanet", dict(num_heads=2, head_dim=4, expand_v=2.0, conv_size=0,
                                                    chunk_size=8)),
    "gated_deltanet": ("gated_deltanet", dict(num_heads=2, chunk_size=8)),
    "deltaproduct-nh2": ("deltaproduct", dict(num_heads=2, num_householder=2, chunk_size=8)),
    "deltaproduct-nh3": ("deltaproduct", dict(num_heads=2, num_householder=3, chunk_size=8)),
    "deltaproduct-nh2-gated": ("deltaproduct", dict(num_heads=2, num_householder=2, use_forget_gate=True,
                                                    chunk_size=8)),
    "deltaproduct-nh3-gated": ("deltaproduct", dict(num_heads=2, num_householder=3, use_forget_gate=True,
                                                    use_output_gate=True, chunk_size=8)),
    "attention": ("attention", dict(num_heads=2)),
    "lstm": ("lstm", dict()),
    "s4d": ("s4d", dict(d_state=8)),
    "s4d-lin-bilinear": ("s4d", dict(d_state=8, init="lin", discretization="bilinear")),
}


def eigenvalue_settings(name: str) -> list[bool | None]:
    """Both eigenvalue ranges for the recurrent mixers; None (no switch) for attention and the LSTM."""
    return [False, True] if name in RECURRENT_MIXERS else [None]


def variant_params() -> list:
    """pytest params ``(variant id, negative_eigenvalues)`` covering every variant and range."""
    params = []
    for variant, (name, _) in MIXER_VARIANTS.items():
        for negative in eigenvalue_settings(name):
            suffix = "" if negative is None else ("-neg" if negative else "-pos")
            params.append(pytest.param(variant, negative, id=variant + suffix))
    return params


def build_mixer(name: str, kwargs: dict, negative_eigenvalues: bool | None, dtype=F64, seed: int = 0,
                d_model: int = D_MODEL) -> torch.nn.Module:
    """A mixer with seeded random parameters (the default init is random), in ``dtype``, eval mode."""
    kwargs = dict(kwargs)
    if negative_eigenvalues is not None:
        kwargs["negative_eigenvalues"] = negative_eigenvalues
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = MIXERS[name](d_model, **kwargs)
    return layer.to(dtype).eval()


def build_variant(variant: str, negative_eigenvalues: bool | None, dtype=F64, seed: int = 0) -> torch.nn.Module:
    name, kwargs = MIXER_VARIANTS[variant]
    return build_mixer(name, kwargs, negative_eigenvalues, dtype, seed)


def random_hidden(batch: int, time: int, dtype=F64, seed: int = 1, d_model: int = D_MODEL) -> torch.Tensor:
    """Standard-normal hidden states [batch, time, d_model], drawn in float64 then cast."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, time, d_model, generator=gen, dtype=F64).to(dtype)


def assert_states_close(actual: dict, expected: dict, tol: float, what: str) -> None:
    """Two per-layer state dicts hold the same names and (relatively) equal tensors."""
    assert sorted(actual) == sorted(expected), f"{what}: state names {sorted(actual)} vs {sorted(expected)}"
    for key in expected:
        assert_close(actual[key], expected[key], tol, f"{what}: state[{key!r}]")


@pytest.fixture(scope="module")
def single_threaded():
    """Run a module's tests with one intra-op thread, then restore the previous count.

    The tensors here are tiny: a second thread only adds synchronisation, and on a shared two-core
    machine a busy neighbour makes every multi-threaded op wait (measured: ~10x slower runs).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
