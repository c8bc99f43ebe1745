"""Scalar arguments across lrnn are checked by ``lrnn.validation``: a value of the wrong kind (a float, a bool
or a string where an int or a number belongs) is a ``TypeError``, one out of range a ``ValueError``, and the
message names the argument and the value given.

One case per call site that used to carry its own copy of the check (most raised ValueError for a wrong kind).
"""

from __future__ import annotations

import re

import pytest

from lrnn.cli.demo import run_parity_demo
from lrnn.layers import Cache, DeltaNet, Mamba
from lrnn.ops import ptd_legs
from lrnn.tasks import AssociativeRecall, ListOps, SelectiveCopy, SequentialDigits, make_task
from lrnn.training import RunConfig, scaled_accuracy

CASES = [
    # (call, error, argument named, value shown)
    (lambda: ListOps(max_args=2.0), TypeError, "max_args", "2.0"),
    (lambda: ListOps(max_args=1), ValueError, "max_args", "1"),
    (lambda: SelectiveCopy(num_tokens=True), TypeError, "num_tokens", "True"),
    (lambda: AssociativeRecall(num_values="4"), TypeError, "num_values", "'4'"),
    (lambda: SequentialDigits("train", levels=4.0), TypeError, "levels", "4.0"),
    (lambda: SequentialDigits("train", levels=18), ValueError, "levels", "18"),
    (lambda: make_task("parity").sample(2.0, 4), TypeError, "batch_size", "2.0"),
    (lambda: Cache(2.0), TypeError, "num_layers", "2.0"),
    (lambda: DeltaNet(16, conv_size=1.5), TypeError, "conv_size", "1.5"),
    (lambda: DeltaNet(16, conv_size=-1), ValueError, "conv_size", "-1"),
    (lambda: Mamba(16, dt_rank=2.0), TypeError, "dt_rank", "2.0"),
    (lambda: scaled_accuracy(0.5, 2.0), TypeError, "num_classes", "2.0"),
    (lambda: ptd_legs(16, steps=1.5, cache=False), TypeError, "steps", "1.5"),
    (lambda: ptd_legs(16, gamma=float("inf"), cache=False), ValueError, "gamma", "inf"),
    (lambda: RunConfig(lr="1e-3"), TypeError, "lr", "'1e-3'"),
    (lambda: RunConfig(grad_clip=-1.0), ValueError, "grad_clip", "-1.0"),
    (lambda: run_parity_demo(workers=0, plot=None), ValueError, "workers", "0"),
    (lambda: run_parity_demo(threads=1.0, plot=None), TypeError, "threads", "1.0"),
]


@pytest.mark.parametrize("call, error, name, shown", CASES, ids=[f"{c[2]}-{c[3]}" for c in CASES])
def test_bad_scalar_argument_is_named_with_its_value(call, error, name, shown):
    with pytest.raises(error, match=rf"\b{re.escape(name)}\b.*got {re.escape(shown)}$"):
        call()
