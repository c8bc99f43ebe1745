"""selective_scan (Mamba's S6 scan as one autograd function) against the sequential reference.

The reference is ``decay_recurrence(mode="recurrent")`` with heads = channels, K = d_state, V = 1 and
the decays in log space (``negative_range`` for [-1, 1]), the path Mamba took before: outputs, the
final state and the gradients of every input (initial state included) must agree.
"""

import sys

import pytest
import torch

from lrnn.ops import decay_recurrence, negative_range, selective_scan

TOLERANCES = {torch.float64: 1e-10, torch.float32: 2e-4}


def _inputs(batch, length, channels, d_state, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    v = rand(batch, length, channels)
    dt = torch.nn.functional.softplus(rand(batch, length, channels))  # > 0, some steps near 0
    A = -torch.exp(rand(channels, d_state) * 0.5)
    B, C = rand(batch, length, d_state), rand(batch, length, d_state)
    h0 = rand(batch, channels, d_state)
    return [x.to(dtype).requires_grad_() for x in (v, dt, A, B, C, h0)]


def _reference(v, dt, A, B, C, h0, negative):
    log_a = dt.unsqueeze(-1) * A  # [B, T, D, N]
    log_a, sign = negative_range(log_a) if negative else (log_a, None)
    shape = (*v.shape, A.shape[1])
    y, final = decay_recurrence(C.unsqueeze(2).expand(shape), B.unsqueeze(2).expand(shape), v.unsqueeze(-1), log_a,
                                sign, scale=1.0, initial_state=h0.unsqueeze(-1), output_final_state=True,
                                mode="recurrent")
    return y.squeeze(-1), final.squeeze(-1)


def _outputs_and_grads(fn, inputs, g_y, g_final):
    y, final = fn(*inputs)
    grads = torch.autograd.grad((y * g_y).sum() + (final * g_final).sum(), inputs)
    return [y, final, *grads]


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("length,segment,block", [(1, 64, None), (13, 64, None), (13, 4, None), (17, 5, None),
                                                  (13, 4, 2), (17, 5, 1), (9, 3, 3)])
def test_matches_the_sequential_reference(dtype, negative, length, segment, block):
    """``block`` rows at a time: 2 of 5 leaves a last block of 1 row, 1 scans row by row, 3 is one block."""
    inputs = _inputs(5 if block else 3, length, 6, 4, dtype)
    gen = torch.Generator().manual_seed(1)
    g_y = torch.randn(*inputs[0].shape, generator=gen, dtype=torch.float64).to(dtype)
    g_final = torch.randn(*inputs[5].shape, generator=gen, dtype=torch.float64).to(dtype)

    def fast(v, dt, A, B, C, h0):
        return selective_scan(v, dt, A, B, C, negative_eigenvalues=negative, initial_state=h0,
                              output_final_state=True, segment=segment, block=block)

    got = _outputs_and_grads(fast, inputs, g_y, g_final)
    want = _outputs_and_grads(lambda *x: _reference(*x, negative), inputs, g_y, g_final)
    names = ["y", "final state", "grad v", "grad dt", "grad A", "grad B", "grad C", "grad h0"]
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype, name
        assert _relative(a, b) < TOLERANCES[dtype], f"{name}: relative error {_relative(a, b):.2e}"


def test_no_initial_state_and_padding_steps():
    """dt = 0 and v = 0 (padding in Mamba) are identity steps; no initial state means zeros."""
    v, dt, A, B, C, _ = (x.detach() for x in _inputs(2, 9, 5, 3, torch.float64))
    dt[:, 4:], v[:, 4:] = 0.0, 0.0
    for negative in (False, True):
        y, final = selective_scan(v, dt, A, B, C, negative_eigenvalues=negative, output_final_state=True)
        _, state4 = selective_scan(v[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], negative_eigenvalues=negative,
                                   output_final_state=True)
        torch.testing.assert_close(final, state4, rtol=0, atol=0)
        ref_y, _ = _reference(v, dt, A, B, C, torch.zeros(2, 5, 3, dtype=torch.float64), negative)
        torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)


def test_empty_sequence_keeps_the_state():
    v, dt, A, B, C, h0 = (x.detach() for x in _inputs(2, 0, 5, 3, torch.float32))
    y, final = selective_scan(v, dt, A, B, C, initial_state=h0, output_final_state=True)
    assert y.shape == (2, 0, 5)
    torch.testing.assert_close(final, h0)
    assert selective_scan(v, dt, A, B, C)[1] is None


@pytest.mark.parametrize("change,match", [
    (lambda a: {**a, "dt": a["dt"][:, :-1]}, "dt must have shape"),
    (lambda a: {**a, "A": a["A"][:-1]}, "A must have shape"),
    (lambda a: {**a, "B": a["B"][..., :-1]}, "B must have shape"),
    (lambda a: {**a, "initial_state": torch.zeros(2, 5, 2)}, "initial_state"),
    (lambda a: {**a, "segment": 0}, "segment must be >= 1, got 0"),
    (lambda a: {**a, "segment": 1.5}, "segment must be an int >= 1, got 1.5"),
    (lambda a: {**a, "negative_eigenvalues": 1}, "negative_eigenvalues"),
    (lambda a: {**a, "block": 0}, "block must be >= 1, got 0"),
    (lambda a: {**a, "block": 2.0}, "block must be an int >= 1, got 2.0"),
])
def test_rejects_bad_arguments(change, match):
    v, dt, A, B, C, _ = (x.detach() for x in _inputs(2, 4, 5, 3, torch.float32))
    args = change({"v": v, "dt": dt, "A": A, "B": B, "C": C, "initial_state": None, "segment": 4,
                   "negative_eigenvalues": False})
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan(args.pop("v"), args.pop("dt"), args.pop("A"), args.pop("B"), args.pop("C"), **args)


@pytest.mark.parametrize("negative", [False, True])
def test_default_blocks_follow_the_cache_budget(monkeypatch, negative):
    """With no ``block`` the rows per block come from the cache budget (per intra-op thread): a budget of
    two rows' buffers per thread splits a batch of 5 per thread into 3 blocks (the last one padded), and
    the results still match the reference."""
    scan_module = sys.modules["lrnn.ops.selective_scan"]
    threads = torch.get_num_threads()
    inputs = _inputs(5 * threads, 11, 6, 4, torch.float64, seed=3)
    steps = 4  # segment 4 at T 11: 3 segments of 4 steps (the last one padded)
    row_bytes = (2 * steps + 2) * 4 * 6 * 8  # the backward pass's buffers, per row: float64 [N, D] states
    monkeypatch.setattr(scan_module, "_CACHE_BYTES", 2 * row_bytes)
    layout = scan_module._layout(inputs[0], 4, 4, None)
    assert (layout.blocks, layout.segments, layout.steps) == (3, 3, 4)
    assert layout.blocks * layout.rows > 5 * threads  # a padded last block
    g_y = torch.randn(*inputs[0].shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    g_final = torch.randn(*inputs[5].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def fast(v, dt, A, B, C, h0):
        return selective_scan(v, dt, A, B, C, negative_eigenvalues=negative, initial_state=h0,
                              output_final_state=True, segment=4)

    got = _outputs_and_grads(fast, inputs, g_y, g_final)
    want = _outputs_and_grads(lambda *x: _reference(*x, negative), inputs, g_y, g_final)
    for a, b in zip(got, want):
        assert _relative(a, b) < TOLERANCES[torch.float64]
