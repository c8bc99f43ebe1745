"""Mixer constructors reject invalid sizes and switches with a clear error that names the argument.

"Clear" means a ValueError / TypeError raised by the layer itself, not an incidental ZeroDivisionError or a
zero-sized weight that fails later (or never).
"""

from __future__ import annotations

import pytest

from layer_testkit import single_threaded
from lrnn.layers import MIXERS, RECURRENT_MIXERS, Attention, DeltaNet, Mamba2

pytestmark = [pytest.mark.usefixtures(single_threaded.__name__),
              # zero-sized layers that get built anyway make torch warn about initialising empty weights
              pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")]


@pytest.mark.parametrize("cls,kwargs,named", [
    (DeltaNet, dict(d_model=18, num_heads=4), "num_heads"),
    (Attention, dict(d_model=18, num_heads=4), "num_heads"),
    (Attention, dict(d_model=12, num_heads=4), "num_heads"),  # head size 3: rotary needs it even
    (Mamba2, dict(d_model=16, expand=2, headdim=12), "headdim"),
    (Mamba2, dict(d_model=16, expand=2, headdim=8, ngroups=3), "ngroups"),
    (DeltaNet, dict(d_model=16, num_heads=2, num_householder=0), "num_householder"),
], ids=["deltanet-heads", "attention-heads", "attention-odd-head", "mamba2-headdim", "mamba2-ngroups",
        "deltaproduct-householder"])
def test_indivisible_sizes_raise_value_error(cls, kwargs, named):
    """Sizes that do not split evenly (d_model by num_heads, expand*d_model by headdim, heads by ngroups)
    raise a ValueError naming the offending argument."""
    with pytest.raises(ValueError, match=named):
        cls(**kwargs)


NON_POSITIVE_SIZES = [
    ("deltanet", dict(num_heads=0), "num_heads"),
    ("deltanet", dict(num_heads=-2), "num_heads"),
    ("gated_deltanet", dict(num_heads=0), "num_heads"),
    ("attention", dict(num_heads=0), "num_heads"),
    ("mamba2", dict(headdim=0), "headdim"),
    ("mamba2", dict(headdim=8, d_state=0), "d_state"),
    ("mamba2", dict(headdim=8, expand=0), "expand"),
    ("mamba", dict(d_state=0), "d_state"),
    ("mamba", dict(expand=0), "expand"),
    ("lstm", dict(hidden_size=-1), "hidden_size"),
]


def test_non_positive_sizes_raise_a_clear_error():
    """Zero or negative sizes (heads, head dim, state size, expansion) raise a ValueError naming the
    argument. All offenders are collected so one run lists every constructor that misbehaves."""
    offenders = []
    for name, kwargs, named in NON_POSITIVE_SIZES:
        call = f"{name}(16, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        try:
            MIXERS[name](16, **kwargs)
        except ValueError as err:
            if named not in str(err):
                offenders.append(f"{call}: ValueError not naming {named!r}: {err}")
        except Exception as err:  # noqa: BLE001 - any other exception type is the failure being reported
            offenders.append(f"{call}: {type(err).__name__}: {err}")
        else:
            offenders.append(f"{call}: accepted")
    assert not offenders, "non-positive sizes without a clear ValueError:\n" + "\n".join(offenders)


def test_d_model_must_be_positive():
    """d_model <= 0 is rejected by every mixer with a ValueError (not accepted, not a torch RuntimeError or
    a ZeroDivisionError)."""
    offenders = []
    for name in MIXERS:
        for bad in (0, -16):
            try:
                MIXERS[name](bad)
            except ValueError:
                pass  # some mixers report it through a derived size (head_dim, dt_rank): acceptable
            except Exception as err:  # noqa: BLE001
                offenders.append(f"{name}(d_model={bad!r}): {type(err).__name__}: {err}")
            else:
                offenders.append(f"{name}(d_model={bad!r}): accepted")
    assert not offenders, "non-positive d_model without a clear error:\n" + "\n".join(offenders)


def test_negative_eigenvalues_must_be_a_bool():
    """The eigenvalue switch of every recurrent mixer rejects non-bools (the string "False" is truthy and
    would silently select the [-1, 1] range) with a TypeError naming negative_eigenvalues."""
    offenders = []
    for name in RECURRENT_MIXERS:
        kwargs = dict(headdim=8) if name == "mamba2" else {}
        for bad in ("False", 1, None):
            try:
                MIXERS[name](16, negative_eigenvalues=bad, **kwargs)
            except TypeError as err:
                if "negative_eigenvalues" not in str(err):
                    offenders.append(f"{name}(negative_eigenvalues={bad!r}): TypeError not naming it: {err}")
            except Exception as err:  # noqa: BLE001
                offenders.append(f"{name}(negative_eigenvalues={bad!r}): {type(err).__name__}: {err}")
            else:
                offenders.append(f"{name}(negative_eigenvalues={bad!r}): accepted")
    assert not offenders, "non-bool eigenvalue switches accepted:\n" + "\n".join(offenders)
