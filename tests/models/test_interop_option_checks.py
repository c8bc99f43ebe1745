"""The interop readers' option checks: a peer config value of the wrong kind is a TypeError, one out of range a
ValueError; both name the config file and the key (the checks are ``lrnn.validation``'s)."""

from __future__ import annotations

import pytest

from lrnn.models.interop.common import get_int, get_positive

SOURCE = "peer/config.json"


@pytest.mark.parametrize("value, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError),
                                          ("2", TypeError)])
def test_get_int_refuses_by_name(value, error):
    with pytest.raises(error, match=r"^peer/config\.json: config key 'd_state' must be (an int )?>= 1, got "):
        get_int(SOURCE, {"d_state": value}, "d_state")


def test_get_int_reads_defaults_and_minimum():
    assert get_int(SOURCE, {"d_state": 16}, "d_state") == 16
    assert get_int(SOURCE, {}, "d_conv", 4) == 4
    assert get_int(SOURCE, {"d_intermediate": 0}, "d_intermediate", 0, minimum=0) == 0
    with pytest.raises(ValueError, match=r"missing config key 'vocab_size'"):
        get_int(SOURCE, {}, "vocab_size")


@pytest.mark.parametrize("value, error", [(0.0, ValueError), (-1e-5, ValueError), ("1e-5", TypeError),
                                          (False, TypeError)])
def test_get_positive_refuses_by_name(value, error):
    with pytest.raises(error, match=r"^peer/config\.json: config key 'norm_eps' must be "):
        get_positive(SOURCE, {"norm_eps": value}, "norm_eps", 1e-5)
    assert get_positive(SOURCE, {}, "norm_eps", 1e-5) == 1e-5
