"""The one cache object for every layer kind: per-layer named state tensors.

A recurrent layer keeps fixed-size states (``"conv"`` for each short conv, ``"ssm"`` for the recurrent
state, ``"h"``/``"c"`` for the LSTM); attention keeps its growing ``"k"``/``"v"``. Layers read their
entry, run from it, and write the new states back, so ``model(ids, cache=cache)`` continues a sequence.
"""

from __future__ import annotations

import torch

from lrnn.validation import check_positive


class Cache:
    """Per-layer decoding state of a model.

    Attributes:
        layers: one dict of named state tensors per layer (empty until the layer first runs).
        length: tokens consumed so far (attention layers derive positions from their own K length).
    """

    def __init__(self, num_layers: int) -> None:
        check_positive(num_layers=num_layers)
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        self.length = 0

    def __len__(self) -> int:
        return len(self.layers)

    def clone(self) -> "Cache":
        """An independent copy (every state tensor cloned): a snapshot to roll back to, e.g. before a
        speculative verification step."""
        copy = Cache(len(self))
        copy.layers = [{name: value.clone() for name, value in layer.items()} for layer in self.layers]
        copy.length = self.length
        return copy

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` of every state (beam search, dropping finished rows)."""
        for layer in self.layers:
            for name, value in layer.items():
                layer[name] = value.index_select(0, index)

    def nbytes(self) -> int:
        """Memory held by the cache."""
        return sum(v.numel() * v.element_size() for layer in self.layers for v in layer.values())
