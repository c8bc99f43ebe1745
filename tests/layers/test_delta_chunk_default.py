"""The DeltaNet family's layers take their default chunk size from ``lrnn.ops.delta_chunk_size``."""

from __future__ import annotations

import pytest

from lrnn.layers.deltanet import DeltaNet, DeltaProduct, GatedDeltaNet
from lrnn.ops import delta_chunk_size


@pytest.mark.parametrize("layer", [DeltaNet, GatedDeltaNet, DeltaProduct])
@pytest.mark.parametrize("num_heads, head_dim", [(4, 32), (2, 128)])
def test_default_chunk_follows_head_dim(layer, num_heads, head_dim):
    mixer = layer(128, num_heads=num_heads, head_dim=head_dim)
    assert mixer.chunk_size == delta_chunk_size(head_dim) == (16 if head_dim <= 64 else 64)


def test_explicit_chunk_size_wins_and_is_checked():
    assert DeltaNet(128, chunk_size=8).chunk_size == 8
    with pytest.raises(ValueError, match="chunk_size"):
        DeltaNet(128, chunk_size=0)
