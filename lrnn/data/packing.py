"""Packing: a token stream cut into fixed-length rows that hold several documents back to back.

Row ``r`` of a stream with sequence length ``T`` is ``stream[r T : r T + T + 1]``: inputs are its first
``T`` tokens, targets the last ``T`` (the next token at each position). A row begins wherever the cut
falls, often inside a document, and holds the following documents whole or in part; every document
starts with the end-of-document token (``lrnn.data.shards``), so no target asks for a token of one
document from the context of the previous one once the model resets its state at document starts.

With each row come ``seq_starts`` (True at the first token of each document -- its eos -- and at
position 0, where the row's context begins) and ``positions`` (position within the document, counted from
the row's start for the document the row begins inside). ``LanguageModel.forward(..., seq_starts=...)``
takes the flags so that no recurrent state, short-conv window or attention crosses a document boundary.

``RowOrder`` fixes which rows make up each optimiser step's global batch: a fresh permutation of all rows
per epoch, drawn from ``(seed, epoch)``, so the data order is a pure function of the step and the seed --
what lets a resumed run, on any number of processes, see exactly the batches of a straight run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lrnn.validation import check_int


@dataclass
class PackedBatch:
    """Rows of a packed stream, all ``[B, T]``: token ids (long), next-token targets (long), document
    starts (bool) and positions within the document (long)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    seq_starts: torch.Tensor
    positions: torch.Tensor

    def to(self, device: torch.device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (self.inputs, self.targets, self.seq_starts, self.positions)))


class PackedRows:
    """The rows of length ``seq_len`` of ``stream`` (a 1-D integer array, e.g. a memmap), whose documents
    start at the sorted offsets ``starts``."""

    def __init__(self, stream: np.ndarray, starts: np.ndarray, seq_len: int) -> None:
        check_int("seq_len", seq_len, 1)
        self.stream, self.starts, self.seq_len = stream, np.asarray(starts, dtype=np.int64), seq_len
        self.num_rows = (len(stream) - 1) // seq_len
        if self.num_rows < 1:
            raise ValueError(f"seq_len {seq_len} is too long for a stream of {len(stream)} tokens: a row needs "
                             f"seq_len + 1 tokens")

    def batch(self, rows: Sequence[int]) -> PackedBatch:
        """The rows numbered ``rows`` (each in [0, num_rows)) as one batch."""
        T = self.seq_len
        tokens = np.stack([np.asarray(self.stream[r * T: r * T + T + 1], dtype=np.int64) for r in rows])
        flags = np.stack([self._start_flags(r * T) for r in rows])
        positions = _positions(flags)
        return PackedBatch(torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:]),
                           torch.from_numpy(flags), torch.from_numpy(positions))

    def _start_flags(self, offset: int) -> np.ndarray:
        """[T] bool: True where a document starts within ``stream[offset : offset + T]``, and at 0."""
        T = self.seq_len
        inside = self.starts[np.searchsorted(self.starts, offset): np.searchsorted(self.starts, offset + T)]
        flags = np.zeros(T, dtype=bool)
        flags[inside - offset] = True
        flags[0] = True
        return flags


def _positions(flags: np.ndarray) -> np.ndarray:
    """[B, T] position of each token since the last True flag at or before it (flags[:, 0] is True)."""
    index = np.broadcast_to(np.arange(flags.shape[1]), flags.shape)
    last_start = np.maximum.accumulate(np.where(flags, index, 0), axis=1)
    return (index - last_start).astype(np.int64)


class RowOrder:
    """Which rows form each step's global batch: step ``s`` takes samples ``[s B, (s + 1) B)`` of an endless
    sequence in which epoch ``e`` is the permutation of all rows drawn by ``numpy.random.default_rng((seed,
    e))`` (PCG64: the same on every platform)."""

    def __init__(self, num_rows: int, seed: int) -> None:
        check_int("num_rows", num_rows, 1)
        self.num_rows, self.seed = num_rows, seed
        self._epoch, self._permutation = -1, np.empty(0, dtype=np.int64)

    def rows(self, step: int, batch_size: int) -> list[int]:
        """The ``batch_size`` row numbers of step ``step`` (0-based)."""
        return [self._row(i) for i in range(step * batch_size, (step + 1) * batch_size)]

    def _row(self, sample: int) -> int:
        epoch, within = divmod(sample, self.num_rows)
        if epoch != self._epoch:
            self._epoch = epoch
            self._permutation = np.random.default_rng((self.seed, epoch)).permutation(self.num_rows)
        return int(self._permutation[within])
