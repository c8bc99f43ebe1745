"""Packed documents at the op level: a row holding several documents, with ``seq_starts`` (True at each
document's first token), gives what running each document on its own gives -- outputs, final state and
the gradients of every input.

The recurrences reset through a zero decay at each start (``reset_at_starts``: ``log_decay = -inf``), which
the chunked forms must take exactly, in both eigenvalue ranges and with the gate of the delta rule applied
before the first Householder sub-step; ``short_conv`` and ``s4d_scan`` take ``seq_starts`` themselves. A
row's first document continues ``initial_state`` unless its first token is flagged; the final state is the
last document's. Documents have odd lengths (1 included), longer than the chunks, with boundaries inside
chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lrnn.ops import decay_recurrence, delta_rule, reset_at_starts, s4d_scan, short_conv

from ops_helpers import (F32, F64, TOL_F32, TOL_F64, assert_close, decay_recurrence_inputs, delta_rule_inputs,
                         generator, normal, short_conv_inputs)

# Document lengths per row (each row 23 tokens). Row 0 flags its first token (no state carried in); row 1
# does not (its first document continues initial_state); row 2 is one unflagged document.
ROWS = [[1, 9, 5, 1, 7], [11, 3, 1, 1, 7], [23]]
FLAG_FIRST = [True, False, False]
T = 23


def starts_of(rows=ROWS, flag_first=FLAG_FIRST) -> torch.Tensor:
    """bool [B, T]: True at each document's first token (the row's first token as ``flag_first`` says)."""
    starts = torch.zeros(len(rows), sum(rows[0]), dtype=torch.bool)
    for b, lengths in enumerate(rows):
        offsets = [sum(lengths[:i]) for i in range(len(lengths))]
        starts[b, offsets] = True
        starts[b, 0] = flag_first[b]
    return starts


def separately(op: Callable, args: dict, slicer: Callable, **options):
    """Each document of ``ROWS`` run alone: ``(o [B, T, ...], final states [B, ...])``. ``slicer(args, b, s,
    e)`` cuts row b's tokens s..e-1 out of every per-token input; a row's first document gets the row's
    ``initial_state`` unless its first token is flagged."""
    outs, finals = [], []
    for b, lengths in enumerate(ROWS):
        pieces, start = [], 0
        for length in lengths:
            part = slicer(args, b, start, start + length)
            carried = start == 0 and not FLAG_FIRST[b] and args.get("initial_state") is not None
            part["initial_state"] = args["initial_state"][b:b + 1] if carried else None
            o, final = op(**part, output_final_state=True, **options)
            pieces.append(o)
            start += length
        outs.append(torch.cat(pieces, dim=1))
        finals.append(final)
    return torch.cat(outs), torch.cat(finals)


def with_grads(run: Callable, args: dict, seed: int = 7) -> dict[str, torch.Tensor]:
    """``run(leaves) -> (o, final)`` with the floating-point inputs as leaves; backprop a random upstream
    gradient (the same for the same ``seed``). Returns o, the final state and every input's gradient."""
    def real(x: torch.Tensor) -> torch.Tensor:  # complex tensors (S4D) as [..., 2] real ones
        return torch.view_as_real(x) if x.is_complex() else x

    leaves = {n: t.detach().clone().requires_grad_(True)
              if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) else t
              for n, t in args.items()}
    o, final = run(leaves)
    gen = generator(seed)
    loss = (o * normal(o.shape, gen, o.dtype)).sum() + (real(final) * normal(real(final).shape, gen)).sum()
    names = [n for n, t in leaves.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return {"o": o.detach(), "final": real(final.detach()), **{f"grad_{n}": real(g) for n, g in zip(names, grads)}}


def assert_same(actual: dict, expected: dict, tol: float, what: str) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_close(actual[name], expected[name], tol, f"{what}: {name}")


def assert_can_fail(packed_without_starts: torch.Tensor, separate: torch.Tensor) -> None:
    """The rows without seq_starts differ from the separate runs: the comparison is not vacuous."""
    err = (packed_without_starts - separate).norm() / separate.norm()
    assert err > 1e-3, f"ignoring the document starts changes nothing ({err:.1e}): the test cannot fail"


def time_slicer(tokens, steps=(), per_step: int = 1):
    """A slicer cutting the [B, T, ...] inputs named in ``tokens`` and the [B, T * per_step, ...] ones in
    ``steps`` (sub-steps); the other inputs (weights) pass whole."""
    def cut(args, b, s, e):
        part = dict(args)
        for n in tokens:
            part[n] = None if args[n] is None else args[n][b:b + 1, s:e]
        for n in steps:
            part[n] = args[n][b:b + 1, s * per_step:e * per_step]
        return part
    return cut


DECAY_TOKENS = ("q", "k", "v", "log_decay", "decay_negative")
DELTA_TOKENS, DELTA_STEPS = ("q", "log_decay", "decay_negative"), ("k", "v", "beta")


def with_resets(args: dict, starts: torch.Tensor) -> dict:
    """``args`` with a zero decay at every start (``reset_at_starts``); an ungated delta rule (log_decay
    None) gets a gate that is 1 (log 0) elsewhere."""
    log_decay = args["log_decay"]
    if log_decay is None:
        log_decay = torch.zeros(starts.shape + (args["q"].shape[2],), dtype=args["q"].dtype)
    log_decay, decay_negative = reset_at_starts(starts, log_decay, args["decay_negative"])
    return {**args, "log_decay": log_decay, "decay_negative": decay_negative}


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize("W", [1, 2, 4])
def test_short_conv_taps_stay_in_their_document(W, mode):
    """Float64: no tap of a document reads the previous document; the final state is the last document's."""
    args = short_conv_inputs(B=3, T=T, D=5, W=W, seed=W)
    starts = starts_of()
    options = dict(activation="silu", mode=mode)
    packed = with_grads(lambda a: short_conv(**a, output_final_state=True, seq_starts=starts, **options), args)
    expected = with_grads(lambda a: separately(short_conv, a, time_slicer(["x"]), **options), args)
    assert_same(packed, expected, TOL_F64, f"short_conv W={W} {mode}")
    if W > 1:
        assert_can_fail(short_conv(**args, **options)[0], expected["o"])


@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_head", "per_channel"])
@pytest.mark.parametrize("mode,chunk_size", [("chunk", 4), ("chunk", 8), ("chunk", 20), ("recurrent", 64)])
def test_decay_recurrence_zero_decay_resets(mode, chunk_size, per_channel, negative):
    """A zero decay (log -inf) at each start: float64 outputs, final state and gradients (decays included,
    zero at the starts) equal separate runs; decays in [0, 1] or [-1, 1]. Chunk 20 splits per-channel
    decays into two sub-chunks of 10 (the cross-sub-chunk factorisation sees the -inf too)."""
    args = decay_recurrence_inputs(B=3, T=T, per_channel=per_channel, seed=3,
                                   decay_range=(-1.0, 1.0) if negative else (0.0, 1.0))
    if not negative:
        args["decay_negative"] = None
    starts = starts_of()
    options = dict(mode=mode, chunk_size=chunk_size)

    packed = with_grads(lambda a: decay_recurrence(**with_resets(a, starts), output_final_state=True, **options), args)
    expected = with_grads(lambda a: separately(decay_recurrence, a, time_slicer(DECAY_TOKENS), **options), args)
    assert_same(packed, expected, TOL_F64, f"decay_recurrence {mode} C={chunk_size}")
    assert_can_fail(decay_recurrence(**args, **options)[0], expected["o"])


@pytest.mark.parametrize("negative", [False, True], ids=["beta01", "beta02"])
@pytest.mark.parametrize("gate", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("n_h", [1, 2, 3])
@pytest.mark.parametrize("mode,chunk_size", [("chunk", 5), ("chunk", 16), ("recurrent", 64)])
def test_delta_rule_resets_before_the_first_householder_step(mode, chunk_size, n_h, gate, negative):
    """The delta rule over packed documents: a gate 0 at each start (for the ungated rule, a gate that is 1
    elsewhere), applied once, before the start token's first sub-step. Float64 outputs, final state and
    gradients equal separate runs (chunk sizes count sub-steps, so boundaries fall inside chunks)."""
    args = delta_rule_inputs(B=3, T=T, num_householder=n_h, gate=gate, seed=n_h,
                             beta_range=(0.0, 2.0) if negative else (0.0, 1.0))
    starts = starts_of()
    options = dict(num_householder=n_h, mode=mode, chunk_size=chunk_size)

    packed = with_grads(lambda a: delta_rule(**with_resets(a, starts), output_final_state=True, **options), args)
    slicer = time_slicer(DELTA_TOKENS, DELTA_STEPS, n_h)
    expected = with_grads(lambda a: separately(delta_rule, a, slicer, **options), args)
    assert_same(packed, expected, TOL_F64, f"delta_rule n_h={n_h} {mode} C={chunk_size}")
    assert_can_fail(delta_rule(**args, **options)[0], expected["o"])


def test_reset_at_starts_in_float32_chunks():
    """Float32: the chunked ops with zero decays at the starts match separate float32 runs to 1e-4 and
    have finite gradients (no 0 * inf at the -inf decays)."""
    starts = starts_of()
    args = decay_recurrence_inputs(B=3, T=T, seed=5, dtype=F32)
    packed = with_grads(lambda a: decay_recurrence(**with_resets(a, starts), output_final_state=True, chunk_size=4),
                        args)
    expected = with_grads(lambda a: separately(decay_recurrence, a, time_slicer(DECAY_TOKENS), chunk_size=4), args)
    assert_same(packed, expected, TOL_F32, "decay_recurrence float32")
    args = delta_rule_inputs(B=3, T=T, num_householder=2, gate=True, seed=6, dtype=F32)
    options = dict(num_householder=2, chunk_size=6)
    packed = with_grads(lambda a: delta_rule(**with_resets(a, starts), output_final_state=True, **options), args)
    slicer = time_slicer(DELTA_TOKENS, DELTA_STEPS, 2)
    expected = with_grads(lambda a: separately(delta_rule, a, slicer, **options), args)
    assert_same(packed, expected, TOL_F32, "delta_rule float32")


def s4d_inputs(seed: int, B: int = 3, H: int = 4, M: int = 3) -> dict:
    gen = generator(seed)
    cplx = lambda *shape: torch.complex(normal(shape, gen), normal(shape, gen))  # noqa: E731
    A = torch.complex(-torch.rand(H, M, generator=gen, dtype=F64) - 0.05, normal((H, M), gen))
    return dict(u=normal((B, T, H), gen), A=A, B=cplx(H, M), C=cplx(H, M),
                dt=torch.rand(H, generator=gen, dtype=F64) * 0.5 + 0.05, D=normal((H,), gen),
                initial_state=cplx(B, H, M))


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_scan_documents(discretization, mode):
    """s4d_scan with seq_starts: the recurrence resets its state; the FFT path convolves each document in
    a row of its own. Float64 outputs, final state and gradients (A, B, C, dt, D, u, initial state) equal
    separate runs."""
    args = s4d_inputs(seed=11)
    starts = starts_of()
    options = dict(discretization=discretization, mode=mode)

    packed = with_grads(lambda a: s4d_scan(**a, output_final_state=True, seq_starts=starts, **options), args)
    expected = with_grads(lambda a: separately(s4d_scan, a, time_slicer(["u"]), **options), args)
    assert_same(packed, expected, TOL_F64, f"s4d_scan {discretization} {mode}")
    assert_can_fail(s4d_scan(**args, **options)[0], expected["o"])


def test_s4d_bidirectional_documents():
    """The FFT path's anti-causal kernel (bidirectional S4D) also stays inside each document."""
    args = {**s4d_inputs(seed=12), "initial_state": None}
    gen = generator(13)
    anti = torch.complex(normal((4, 3), gen), normal((4, 3), gen))
    starts = starts_of(flag_first=[True, True, True])
    o, _ = s4d_scan(**args, C_anticausal=anti, seq_starts=starts)
    expected = torch.zeros_like(o)
    for b, lengths in enumerate(ROWS):
        for s, e in zip([sum(lengths[:i]) for i in range(len(lengths))], [sum(lengths[:i + 1]) for i in
                                                                            range(len(lengths))]):
            expected[b:b + 1, s:e] = s4d_scan(**{**args, "u": args["u"][b:b + 1, s:e]}, C_anticausal=anti)[0]
    assert_close(o, expected, TOL_F64, "bidirectional s4d_scan")


@pytest.mark.parametrize("op", ["short_conv", "s4d_scan"])
def test_bad_seq_starts(op):
    """seq_starts must be a bool [B, T] tensor; s4d_scan does not combine it with a padding mask."""
    if op == "short_conv":
        args = short_conv_inputs(B=3, T=T)
        call = lambda **kw: short_conv(**args, **kw)  # noqa: E731
    else:
        args = s4d_inputs(seed=1)
        call = lambda **kw: s4d_scan(**args, **kw)  # noqa: E731
    with pytest.raises(TypeError, match="seq_starts must be a bool tensor"):
        call(seq_starts=starts_of().long())
    with pytest.raises(ValueError, match=r"seq_starts must have shape \[batch, time\] = \(3, 23\), got \(3, 22\)"):
        call(seq_starts=starts_of()[:, :-1])
    if op == "s4d_scan":
        with pytest.raises(ValueError, match="not both"):
            call(seq_starts=starts_of(), mask=torch.ones(3, T, dtype=torch.bool))
