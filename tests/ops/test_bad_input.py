"""Bad arguments raise ``ValueError`` (wrong shape or value) or ``TypeError`` (wrong type or dtype), and the
message names the offending argument.

Each case starts from a valid call and replaces one argument: ``change`` maps an argument name to its new
value, or to a function of the valid arguments that builds it.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from lrnn.ops import decay_recurrence, decay_step, delta_rule, delta_step, short_conv

from ops_helpers import F32, assert_close, decay_recurrence_inputs, delta_rule_inputs, short_conv_inputs

N_H = 2  # the delta rule cases run with two Householder steps, so per-token and per-step shapes differ


def valid_decay_recurrence() -> dict:
    return decay_recurrence_inputs(B=2, T=5, H=2, K=4, V=3, seed=0, dtype=F32)


def valid_delta_rule() -> dict:
    return delta_rule_inputs(B=2, T=5, H=2, K=4, V=3, num_householder=N_H, seed=0, dtype=F32) | {
        "num_householder": N_H}


def valid_short_conv() -> dict:
    return short_conv_inputs(B=2, T=5, D=5, W=4, seed=0, dtype=F32)


def case(error: type[Exception], name: str, **change) -> tuple:
    """One bad call: ``change`` replaces arguments; the error must be ``error`` and mention ``name``."""
    label = "-".join(change) + "-" + error.__name__
    return pytest.param(error, name, change, id=label)


def with_entry(tensor: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``tensor`` with its first entry set to ``value``."""
    out = tensor.clone()
    out.view(-1)[0] = value
    return out


def expect_error(op, valid: dict, error: type[Exception], name: str, change: dict) -> None:
    """Call ``op`` on ``valid`` with ``change`` applied, in both modes unless the case sets the mode."""
    args = valid | {n: (v(valid) if callable(v) else v) for n, v in change.items()}
    modes = [args.pop("mode")] if "mode" in args else ["chunk", "recurrent"]
    for mode in modes:
        with pytest.raises(error, match=rf"\b{re.escape(name)}\b"):
            op(**args, mode=mode)


# Cases shared by the two recurrences (q, k, initial_state and the mode / chunk options).
COMMON = [
    case(TypeError, "q", q=lambda a: a["q"].tolist()),
    case(ValueError, "q", q=lambda a: a["q"][..., 0]),
    case(TypeError, "q", q=lambda a: a["q"].long()),
    case(TypeError, "q", q=lambda a: a["q"].bool()),
    case(TypeError, "k", k=lambda a: a["k"].numpy()),
    case(ValueError, "k", k=lambda a: a["k"][..., :3]),
    case(ValueError, "k", k=lambda a: a["k"][:, :4]),
    case(ValueError, "k", k=lambda a: a["k"][:1]),
    case(TypeError, "k", k=lambda a: a["k"].double()),
    case(TypeError, "k", k=lambda a: a["k"].int()),
    case(ValueError, "v", v=lambda a: a["v"][:1]),
    case(ValueError, "v", v=lambda a: a["v"][:, :-1]),
    case(ValueError, "v", v=lambda a: a["v"][..., 0]),
    case(TypeError, "v", v=lambda a: a["v"].double()),
    case(TypeError, "v", v=lambda a: a["v"].long()),
    case(TypeError, "log_decay", log_decay=lambda a: a["log_decay"].long()),
    case(TypeError, "log_decay", log_decay=lambda a: a["log_decay"].tolist()),
    case(ValueError, "log_decay", log_decay=lambda a: a["log_decay"][:, :-1]),
    case(ValueError, "log_decay", log_decay=lambda a: with_entry(a["log_decay"], 0.01)),
    case(ValueError, "log_decay", log_decay=lambda a: with_entry(a["log_decay"], math.nan)),
    case(ValueError, "log_decay", log_decay=lambda a: with_entry(a["log_decay"], math.inf)),
    case(ValueError, "decay_negative", decay_negative=lambda a: a["decay_negative"][:, :-1]),
    case(ValueError, "decay_negative", decay_negative=lambda a: a["decay_negative"][..., None]),
    case(TypeError, "decay_negative", decay_negative=lambda a: a["decay_negative"].float()),
    case(TypeError, "decay_negative", decay_negative=lambda a: a["decay_negative"].long()),
    case(TypeError, "decay_negative", decay_negative=lambda a: a["decay_negative"].tolist()),
    case(ValueError, "initial_state", initial_state=lambda a: a["initial_state"].transpose(-1, -2)),
    case(ValueError, "initial_state", initial_state=lambda a: a["initial_state"][:1]),
    case(ValueError, "initial_state", initial_state=lambda a: a["initial_state"][0]),
    case(TypeError, "initial_state", initial_state=lambda a: a["initial_state"].long()),
    case(TypeError, "initial_state", initial_state=lambda a: a["initial_state"].tolist()),
    case(ValueError, "chunk_size", chunk_size=0),
    case(ValueError, "chunk_size", chunk_size=-16),
    case(TypeError, "chunk_size", chunk_size=16.0),
    case(TypeError, "chunk_size", chunk_size=True),
    case(TypeError, "chunk_size", chunk_size="16"),
    case(TypeError, "chunk_size", chunk_size=[16]),  # None is valid: delta_chunk_size(key_dim)
    case(ValueError, "mode", mode="parallel"),
    case(ValueError, "mode", mode="Chunk"),
    case(ValueError, "mode", mode=None),
    case(TypeError, "scale", scale="0.5"),
    case(TypeError, "scale", scale=torch.tensor(0.5)),
]

DECAY_RECURRENCE = [
    case(TypeError, "log_decay", log_decay=None),
    case(TypeError, "chunk_size", chunk_size=None),  # the delta rule takes None (its default by key dim)
    case(ValueError, "log_decay", log_decay=lambda a: torch.zeros(2, 5, 2, 3)),  # per-channel with K - 1
    case(ValueError, "log_decay", log_decay=lambda a: torch.zeros(2, 5)),
]

DELTA_RULE = [
    case(ValueError, "k", k=lambda a: a["k"][:, :5]),  # one step per token, but num_householder = 2
    case(ValueError, "v", v=lambda a: a["v"][:, :5]),
    case(ValueError, "beta", beta=lambda a: a["beta"][:, :5]),
    case(ValueError, "beta", beta=lambda a: a["beta"][..., None]),
    case(ValueError, "beta", beta=lambda a: a["beta"][:1]),
    case(TypeError, "beta", beta=lambda a: a["beta"].long()),
    case(TypeError, "beta", beta=lambda a: a["beta"].tolist()),
    case(TypeError, "beta", beta=0.5),
    case(ValueError, "beta", beta=lambda a: with_entry(a["beta"], -1e-3)),
    case(ValueError, "beta", beta=lambda a: with_entry(a["beta"], 2.001)),
    case(ValueError, "beta", beta=lambda a: with_entry(a["beta"], math.nan)),
    case(ValueError, "beta", beta=lambda a: with_entry(a["beta"], math.inf)),
    case(ValueError, "log_decay", log_decay=lambda a: torch.zeros(2, 5 * N_H, 2)),  # per step, not per token
    case(ValueError, "log_decay", log_decay=lambda a: torch.zeros(2, 5, 2, 4)),  # no per-channel gate
    case(ValueError, "decay_negative", log_decay=None),  # decay_negative without log_decay
    case(ValueError, "num_householder", num_householder=0),
    case(ValueError, "num_householder", num_householder=-1),
    case(TypeError, "num_householder", num_householder=2.0),
    case(TypeError, "num_householder", num_householder=True),
]


@pytest.mark.parametrize("error, name, change", COMMON + DECAY_RECURRENCE)
def test_decay_recurrence_rejects(error, name, change):
    expect_error(decay_recurrence, valid_decay_recurrence(), error, name, change)


@pytest.mark.parametrize("error, name, change", COMMON + DELTA_RULE)
def test_delta_rule_rejects(error, name, change):
    expect_error(delta_rule, valid_delta_rule(), error, name, change)


SHORT_CONV = [
    case(TypeError, "x", x=lambda a: a["x"].tolist()),
    case(ValueError, "x", x=lambda a: a["x"][0]),
    case(TypeError, "x", x=lambda a: a["x"].long()),
    case(ValueError, "weight", weight=lambda a: a["weight"][:2]),
    case(ValueError, "weight", weight=lambda a: a["weight"][:, :0]),
    case(ValueError, "weight", weight=lambda a: a["weight"][:, None]),  # conv1d's [D, 1, W]
    case(TypeError, "weight", weight=lambda a: a["weight"].long()),
    case(TypeError, "weight", weight=lambda a: a["weight"].double()),
    case(TypeError, "weight", weight=lambda a: a["weight"].tolist()),
    case(ValueError, "bias", bias=lambda a: a["bias"][:2]),
    case(ValueError, "bias", bias=lambda a: a["bias"][None]),
    case(TypeError, "bias", bias=lambda a: a["bias"].double()),
    case(TypeError, "bias", bias=lambda a: a["bias"].long()),
    case(TypeError, "bias", bias=1.0),
    case(ValueError, "initial_state", initial_state=lambda a: torch.zeros(2, 4, 5)),  # W, not W - 1
    case(ValueError, "initial_state", initial_state=lambda a: a["initial_state"][:1]),
    case(ValueError, "initial_state", initial_state=lambda a: a["initial_state"].transpose(1, 2)),
    case(TypeError, "initial_state", initial_state=lambda a: a["initial_state"].long()),
    case(TypeError, "initial_state", initial_state=lambda a: a["initial_state"].tolist()),
    case(ValueError, "activation", activation="relu"),
    case(ValueError, "activation", activation="SiLU"),
    case(ValueError, "mode", mode="parallel"),
]


@pytest.mark.parametrize("error, name, change", SHORT_CONV)
def test_short_conv_rejects(error, name, change):
    expect_error(short_conv, valid_short_conv(), error, name, change)


@pytest.mark.parametrize("op, valid", [(decay_recurrence, valid_decay_recurrence), (delta_rule, valid_delta_rule),
                                       (short_conv, valid_short_conv)], ids=["decay_recurrence", "delta_rule",
                                                                             "short_conv"])
def test_valid_calls_pass(op, valid):
    """The base of every case above is accepted in both modes (so each case fails for its one change)."""
    for mode in ("chunk", "recurrent"):
        op(**valid(), mode=mode)


def test_boundary_values_are_accepted():
    """Decays of exactly -1, 0 (log -inf) and 1 and betas of exactly 0 and 2 are valid."""
    args = valid_delta_rule()
    args["beta"] = torch.tensor([0.0, 2.0]).repeat(5).reshape(1, 10, 1).expand(2, 10, 2)
    args["log_decay"] = torch.tensor([0.0, -math.inf, 0.0, -0.5, 0.0]).reshape(1, 5, 1).expand(2, 5, 2).contiguous()
    args["decay_negative"] = torch.tensor([True, False, False, True, True]).reshape(1, 5, 1).expand(2, 5, 2)
    decay_args = valid_decay_recurrence() | {"log_decay": args["log_decay"], "decay_negative": args["decay_negative"]}
    for mode in ("chunk", "recurrent"):
        delta_rule(**args, mode=mode)
        decay_recurrence(**decay_args, mode=mode)


def test_wider_log_decay_and_beta_dtypes_are_accepted():
    """q, k, v must share one dtype, but log_decay and beta may be wider (docs/ops.md): bfloat16 q, k, v
    with float32 decays and betas run, and match the float32 run on the same (bf16-rounded) q, k, v up to
    the bfloat16 rounding of the output."""
    for op, valid in ((decay_recurrence, valid_decay_recurrence()), (delta_rule, valid_delta_rule())):
        low = valid | {n: valid[n].bfloat16() for n in ("q", "k", "v")}
        high = valid | {n: low[n].float() for n in ("q", "k", "v")}
        for mode in ("chunk", "recurrent"):
            o, _ = op(**low, mode=mode)
            o_f32, _ = op(**high, mode=mode)
            assert o.dtype == torch.bfloat16
            assert_close(o, o_f32, 1e-2, f"{op.__name__} {mode}")


# The step ops: one token (time = 1), k, v and beta with n_h sub-steps; no mode or chunk_size.
def valid_decay_step() -> dict:
    return decay_recurrence_inputs(B=2, T=1, H=2, K=4, V=3, seed=0, dtype=F32)


def valid_delta_step() -> dict:
    return delta_rule_inputs(B=2, T=1, H=2, K=4, V=3, num_householder=N_H, seed=0, dtype=F32) | {
        "num_householder": N_H}


def expect_step_error(op, valid: dict, error: type[Exception], name: str, change: dict) -> None:
    args = valid | {n: (v(valid) if callable(v) else v) for n, v in change.items()}
    with pytest.raises(error, match=rf"\b{re.escape(name)}\b"):
        op(**args)


def two_tokens(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x], dim=1)


STEP_COMMON = [
    case(ValueError, "q", q=lambda a: two_tokens(a["q"])),  # a sequence: the step takes one token
    case(ValueError, "q", q=lambda a: a["q"][:, :0]),
    case(ValueError, "q", q=lambda a: a["q"][:, 0]),  # [B, H, K] without the time dim
    case(TypeError, "q", q=lambda a: a["q"].long()),
    case(ValueError, "k", k=lambda a: a["k"][..., :3]),
    case(TypeError, "k", k=lambda a: a["k"].double()),
    case(ValueError, "v", v=lambda a: a["v"][:1]),
    case(ValueError, "log_decay", log_decay=lambda a: with_entry(a["log_decay"], 0.01)),
    case(ValueError, "log_decay", log_decay=lambda a: with_entry(a["log_decay"], math.nan)),
    case(ValueError, "log_decay", log_decay=lambda a: two_tokens(a["log_decay"])),
    case(TypeError, "decay_negative", decay_negative=lambda a: a["decay_negative"].float()),
    case(ValueError, "initial_state", initial_state=lambda a: a["initial_state"].transpose(-1, -2)),
    case(TypeError, "initial_state", initial_state=lambda a: a["initial_state"].long()),
    case(TypeError, "scale", scale="0.5"),
    case(TypeError, "validate", validate=1),
    case(TypeError, "validate", validate=None),
]

DECAY_STEP = [
    case(TypeError, "log_decay", log_decay=None),
    case(ValueError, "log_decay", log_decay=lambda a: torch.zeros(2, 1, 2, 3)),  # per-channel with K - 1
]

DELTA_STEP = [
    case(ValueError, "k", k=lambda a: a["k"][:, :1]),  # one sub-step, but num_householder = 2
    case(ValueError, "v", v=lambda a: a["v"][:, :1]),
    case(ValueError, "beta", beta=lambda a: a["beta"][:, :1]),
    case(ValueError, "beta", beta=lambda a: with_entry(a["beta"], 2.001)),
    case(ValueError, "beta", beta=lambda a: with_entry(a["beta"], -1e-3)),
    case(ValueError, "log_decay", log_decay=lambda a: torch.zeros(2, N_H, 2)),  # per sub-step, not per token
    case(ValueError, "decay_negative", log_decay=None),
    case(ValueError, "num_householder", num_householder=0),
    case(TypeError, "num_householder", num_householder=2.0),
]


@pytest.mark.parametrize("error, name, change", STEP_COMMON + DECAY_STEP)
def test_decay_step_rejects(error, name, change):
    expect_step_error(decay_step, valid_decay_step(), error, name, change)


@pytest.mark.parametrize("error, name, change", STEP_COMMON + DELTA_STEP)
def test_delta_step_rejects(error, name, change):
    expect_step_error(delta_step, valid_delta_step(), error, name, change)


@pytest.mark.parametrize("op, valid", [(decay_step, valid_decay_step), (delta_step, valid_delta_step)],
                         ids=["decay_step", "delta_step"])
def test_valid_step_calls_pass_and_validate_false_skips_the_checks(op, valid):
    """The base of the step cases is accepted; ``validate=False`` (the documented contract for callers
    whose inputs are right by construction) lets an out-of-range decay through unchecked."""
    op(**valid())
    args = valid()
    args["log_decay"] = with_entry(args["log_decay"], 0.01)
    with pytest.raises(ValueError, match=r"\blog_decay\b"):
        op(**args)
    op(**args, validate=False)
