"""The default chunk size of the delta rule: one rule (``delta_chunk_size``), by key dim."""

from __future__ import annotations

import pytest
from torch.utils.flop_counter import FlopCounterMode

from lrnn.ops import delta_chunk_size, delta_rule

from ops_helpers import TOL_F64, assert_close, delta_rule_inputs


@pytest.mark.parametrize("key_dim, expected", [(1, 16), (32, 16), (64, 16), (65, 64), (128, 64)])
def test_rule_by_key_dim(key_dim, expected):
    assert delta_chunk_size(key_dim) == expected


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2.0, TypeError), (None, TypeError)])
def test_rule_rejects_bad_key_dim(bad, error):
    with pytest.raises(error, match="key_dim"):
        delta_chunk_size(bad)


def _flops(**kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        delta_rule(**kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("key_dim", [8, 72])
def test_delta_rule_without_chunk_size_uses_the_rule(key_dim):
    """chunk_size=None runs exactly the chunking ``delta_chunk_size`` names (same work, same outputs)."""
    args = delta_rule_inputs(B=1, T=80, H=1, K=key_dim, V=4, seed=5)
    ruled = delta_chunk_size(key_dim)
    other = 64 if ruled == 16 else 16
    assert _flops(**args) == _flops(**args, chunk_size=ruled) != _flops(**args, chunk_size=other)
    o_default, _ = delta_rule(**args)
    o_recurrent, _ = delta_rule(**args, mode="recurrent")
    assert_close(o_default, o_recurrent, TOL_F64, "o")
