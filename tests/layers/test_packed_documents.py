"""Packed documents through every mixer: ``mixer(hidden, seq_starts=starts)`` on rows that hold several
documents equals running each document on its own -- outputs and the gradients of the input and of every
parameter -- for every registered mixer (``lrnn.layers.MIXERS``, so a new mixer is covered as it
registers), the extra variants of ``MIXER_VARIANTS``, both eigenvalue ranges and every scan mode.

Rows hold random documents of odd lengths (1 included) at different boundaries per row, longer than the
chunk sizes, with boundaries inside chunks. With a cache, a call continues the cached sequence unless its
first token is flagged, and leaves the state of the row's last document.
"""

from __future__ import annotations

import pytest
import torch

from layer_testkit import (F32, F64, MIXER_VARIANTS, TOL, assert_close, build_mixer, eigenvalue_settings,
                           random_hidden, rel_err, single_threaded)
from lrnn.layers import MIXERS

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

T = 29


def random_rows(seed: int, rows: int = 3, time: int = T) -> list[list[int]]:
    """Document lengths per row: random odd lengths in 1..13 (the first row opens with a 1), the last
    document cut to fill the row; the last row is a single document."""
    gen = torch.Generator().manual_seed(seed)
    layout = []
    for r in range(rows - 1):
        lengths = [1] if r == 0 else []
        while sum(lengths) < time:
            lengths.append(min(2 * int(torch.randint(0, 7, (1,), generator=gen)) + 1, time - sum(lengths)))
        layout.append(lengths)
    return layout + [[time]]


def starts_of(layout: list[list[int]], flag_first: list[bool]) -> torch.Tensor:
    """bool [B, T]: True at each document's first token; the row's first token as ``flag_first`` says
    (either way a row starts from a zero state without a cache)."""
    starts = torch.zeros(len(layout), sum(layout[0]), dtype=torch.bool)
    for b, lengths in enumerate(layout):
        starts[b, [sum(lengths[:i]) for i in range(len(lengths))]] = True
        starts[b, 0] = flag_first[b]
    return starts


def spans(lengths: list[int]) -> list[tuple[int, int]]:
    ends = [sum(lengths[:i + 1]) for i in range(len(lengths))]
    return list(zip([0] + ends[:-1], ends))


def cases() -> list:
    """(mixer name, constructor kwargs, negative_eigenvalues) for every registered mixer (its ``small``
    arguments), every MIXER_VARIANTS entry, and chunk size 3 for the mixers with a chunk size."""
    entries = {name: (name, dict(spec.small)) for name, spec in MIXERS.items()}
    entries.update(MIXER_VARIANTS)
    entries.update({f"{name}-chunk3": (name, {**spec.small, "chunk_size": 3})
                    for name, spec in MIXERS.items() if "chunk_size" in spec.fields})
    return [pytest.param(name, kwargs, negative, id=key + range_suffix(negative))
            for key, (name, kwargs) in entries.items() for negative in eigenvalue_settings(name)]


def range_suffix(negative: bool | None) -> str:
    return "" if negative is None else "-neg" if negative else "-pos"


def packed_and_separate(layer, x: torch.Tensor, layout, starts: torch.Tensor, mode, seed: int = 5):
    """Outputs and gradients (input, every parameter) of the packed rows and of each document run alone
    (the layer's default mode), for one random upstream gradient."""
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(x.dtype)
    params = [p for p in layer.parameters() if p.requires_grad]

    def run(forward):
        leaf = x.detach().clone().requires_grad_(True)
        out = forward(leaf)
        grads = torch.autograd.grad((out * upstream).sum(), [leaf, *params], allow_unused=True)
        return {"out": out.detach(), "grad_input": grads[0],
                **{f"grad_{name}": g if g is not None else torch.zeros_like(p)
                   for (name, p), g in zip(layer.named_parameters(), grads[1:])}}

    def separate(leaf):
        rows = [torch.cat([layer(leaf[b:b + 1, s:e]) for s, e in spans(lengths)], dim=1)
                for b, lengths in enumerate(layout)]
        return torch.cat(rows)

    return run(lambda leaf: layer(leaf, seq_starts=starts, mode=mode)), run(separate)


@pytest.mark.parametrize("mode", [None, "chunk", "recurrent"])
@pytest.mark.parametrize("name,kwargs,negative", cases())
def test_packed_rows_equal_separate_documents(name, kwargs, negative, mode):
    """Float64: packed rows (different boundaries per row, first token flagged or not) give the outputs and
    gradients of each document run alone, to 1e-10; without seq_starts they differ (the test can fail)."""
    layer = build_mixer(name, kwargs, negative, F64)
    layout = random_rows(seed=len(name) + len(kwargs))
    starts = starts_of(layout, [True, False, False])
    x = random_hidden(len(layout), T, F64)
    packed, separate = packed_and_separate(layer, x, layout, starts, mode)
    for key in separate:
        assert_close(packed[key], separate[key], TOL[F64], f"{name} {key}")
    with torch.no_grad():
        unpacked = layer(x, mode=mode)
    assert rel_err(unpacked, separate["out"]) > 1e-3, "ignoring the document starts changes nothing"


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_packed_rows_float32(name):
    """Float32, every registered mixer in its default mode (the [-1, 1] range where there is one): packed
    rows match separate documents to 1e-4, outputs and gradients."""
    negative = eigenvalue_settings(name)[-1]
    layer = build_mixer(name, dict(MIXERS[name].small), negative, F32)
    layout = random_rows(seed=7)
    starts = starts_of(layout, [False, True, False])
    packed, separate = packed_and_separate(layer, random_hidden(len(layout), T, F32), layout, starts, None)
    for key in separate:
        assert_close(packed[key], separate[key], TOL[F32], f"{name} float32 {key}")


def cache_cases() -> list:
    return [pytest.param(name, negative, id=name + range_suffix(negative))
            for name in MIXERS for negative in eigenvalue_settings(name)]


@pytest.mark.parametrize("name,negative", cache_cases())
def test_cache_with_seq_starts(name, negative):
    """With a cache: a packed row fed in pieces (cuts inside a document and at a start, the tail token by
    token: the decode steps) gives the outputs of one call; the cache it leaves is the last document's, so
    continuing it equals running the last document plus the continuation alone; a flagged first token
    after a cache starts afresh."""
    layer = build_mixer(name, dict(MIXERS[name].small), negative, F64)
    layout = [[4, 9, 1, 7, 5, 3]]
    starts = starts_of(layout, [False])
    x = random_hidden(1, T + 6, F64)
    row, extra = x[:, :T], x[:, T:]
    with torch.no_grad():
        whole = layer(row, {}, seq_starts=starts)
        cache, pieces = {}, []
        for s, e in [(0, 6), (6, 13), (13, 14), (14, 25), *[(i, i + 1) for i in range(25, T)]]:
            pieces.append(layer(row[:, s:e], cache, seq_starts=starts[:, s:e]))
        assert_close(torch.cat(pieces, dim=1), whole, TOL[F64], f"{name}: pieces with a cache")
        continued = layer(extra, cache)
        last = layout[0][-1]
        alone = layer(torch.cat([row[:, T - last:], extra], dim=1))[:, last:]
        assert_close(continued, alone, TOL[F64], f"{name}: continuing the last document")
        fresh = torch.zeros(1, extra.shape[1], dtype=torch.bool)
        fresh[0, 0] = True
        assert_close(layer(extra, cache, seq_starts=fresh), layer(extra), TOL[F64], f"{name}: a flagged restart")


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_bad_seq_starts(name):
    """seq_starts must be a bool [B, T] tensor like hidden, and does not combine with a padding mask."""
    layer = build_mixer(name, dict(MIXERS[name].small), None if eigenvalue_settings(name) == [None] else False)
    x = random_hidden(2, 5)
    starts = torch.zeros(2, 5, dtype=torch.bool)
    with pytest.raises(TypeError, match="seq_starts must be a bool tensor"):
        layer(x, seq_starts=starts.long())
    with pytest.raises(ValueError, match=r"seq_starts must have shape \[batch, time\] = \(2, 5\), got \(2, 4\)"):
        layer(x, seq_starts=starts[:, :4])
    with pytest.raises(ValueError, match="cannot be combined"):
        layer(x, mask=torch.ones(2, 5, dtype=torch.bool), seq_starts=starts)


def test_bidirectional_s4d_packed():
    """The bidirectional S4D layer (anti-causal kernel) keeps each document to itself too."""
    layer = build_mixer("s4d", dict(d_state=8, bidirectional=True), None, F64)
    layout = random_rows(seed=3)
    starts = starts_of(layout, [True, True, True])
    packed, separate = packed_and_separate(layer, random_hidden(len(layout), T, F64), layout, starts, None)
    for key in separate:
        assert_close(packed[key], separate[key], TOL[F64], f"bidirectional s4d {key}")
