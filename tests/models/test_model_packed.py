"""Packed documents through the language model: ``model(ids, seq_starts=starts)`` on rows of several
documents gives each document's logits and the gradients of every parameter as if each document ran
alone, for every registered mixer (both eigenvalue ranges) and a hybrid stack; with a cache it continues
the row's last document."""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import MIXERS
from model_testkit import (F32, F64, TOL, assert_close, build_model, is_recurrent, random_ids, rel_err,
                           single_threaded, tiny_config)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

# Two rows of 27 tokens: odd-length documents (1 included), different boundaries, longer than the chunks.
LAYOUT = [[1, 11, 5, 3, 7], [9, 13, 1, 1, 3]]
T = 27


def starts_of(layout=LAYOUT) -> torch.Tensor:
    starts = torch.zeros(len(layout), T, dtype=torch.bool)
    for b, lengths in enumerate(layout):
        starts[b, [sum(lengths[:i]) for i in range(len(lengths))]] = True
    starts[1, 0] = False  # the row start is a boundary whether or not it is flagged
    return starts


def spans(lengths):
    ends = [sum(lengths[:i + 1]) for i in range(len(lengths))]
    return list(zip([0] + ends[:-1], ends))


def logits_and_grads(model, forward, seed: int = 3) -> dict[str, torch.Tensor]:
    """``forward()`` -> logits [B, T, V]; backprop a random upstream gradient into every parameter."""
    logits = forward()
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(logits.dtype)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad((logits * upstream).sum(), params, allow_unused=True)
    return {"logits": logits.detach(), **{n: torch.zeros_like(p) if g is None else g
                                          for n, p, g in zip(names, params, grads)}}


def check_packed(model, ids: torch.Tensor, tol: float, what: str) -> None:
    packed = logits_and_grads(model, lambda: model(ids, seq_starts=starts_of()))
    separate = logits_and_grads(model, lambda: torch.cat([
        torch.cat([model(ids[b:b + 1, s:e]) for s, e in spans(lengths)], dim=1)
        for b, lengths in enumerate(LAYOUT)]))
    for key in separate:
        assert_close(packed[key], separate[key], tol, f"{what}: {key}")
    with torch.no_grad():
        assert rel_err(model(ids), separate["logits"]) > 1e-3, f"{what}: packing without seq_starts changes nothing"


def model_cases() -> list:
    cases = [pytest.param(name, negative, id=f"{name}{'-neg' if negative else '-pos' if is_recurrent(name) else ''}")
             for name in sorted(MIXERS) for negative in ([False, True] if is_recurrent(name) else [False])]
    return cases + [pytest.param(sorted(MIXERS), True, id="hybrid-all")]


@pytest.mark.parametrize("mixer,negative", model_cases())
def test_packed_logits_and_gradients_float64(mixer, negative):
    """Float64, 2 layers: packed logits and every parameter's gradient equal separate documents to 1e-10."""
    config = tiny_config(mixer, n_layers=2 if isinstance(mixer, str) else len(mixer), negative_eigenvalues=negative)
    check_packed(build_model(config, F64), random_ids(2, T), TOL[F64], f"{mixer}")


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_packed_logits_and_gradients_float32(mixer):
    """Float32: the same to 1e-4."""
    check_packed(build_model(tiny_config(mixer), F32), random_ids(2, T, seed=4), TOL[F32], f"{mixer} float32")


def test_packed_prefill_then_decode_with_cache():
    """A hybrid model with a cache: a packed row fed as a prefill and then token by token gives the logits
    of one call, and continuing after it equals the last document continued alone."""
    model = build_model(tiny_config(sorted(MIXERS), n_layers=len(MIXERS)), F64)
    ids, starts = random_ids(1, T + 4, seed=6), starts_of()[1:]
    row, extra = ids[:, :T], ids[:, T:]
    with torch.no_grad():
        whole = model(row, seq_starts=starts)
        cache = model.new_cache()
        pieces = [model(row[:, :20], cache, seq_starts=starts[:, :20])]
        pieces += [model(row[:, i:i + 1], cache, seq_starts=starts[:, i:i + 1]) for i in range(20, T)]
        assert_close(torch.cat(pieces, dim=1), whole, TOL[F64], "prefill + decode vs one call")
        last = LAYOUT[1][-1]
        alone = model(torch.cat([row[:, T - last:], extra], dim=1))[:, last:]
        assert_close(model(extra, cache), alone, TOL[F64], "continuing the last document")


def test_bad_seq_starts():
    """seq_starts must be a bool tensor shaped like input_ids, and not combined with attention_mask."""
    model = build_model(tiny_config("attention"), F64)
    ids, starts = random_ids(2, T), starts_of()
    with pytest.raises(TypeError, match="seq_starts must be a bool tensor"):
        model(ids, seq_starts=starts.long())
    with pytest.raises(ValueError, match=r"seq_starts must have shape \[batch, time\] = \(2, 27\)"):
        model(ids, seq_starts=starts[:1])
    with pytest.raises(ValueError, match="cannot be combined"):
        model(ids, attention_mask=torch.ones_like(ids), seq_starts=starts)
