"""Shared helpers of the training tests: tiny tasks and a tiny run config.

A uniquely named module rather than ``conftest.py``: ``from conftest import ...`` picks whichever
``conftest`` module is loaded first, so with several test directories on one command line it can find
another directory's (see tests/layers/layer_testkit.py).
"""

from __future__ import annotations

import torch

from lrnn.tasks import Task, TaskBatch
from lrnn.tasks.base import IGNORE_INDEX, padding_mask
from lrnn.layers import GENERIC_FIELDS, mixer_spec
from lrnn.training import RunConfig


class PrefixParity(Task):
    """Random bits with the running parity as the target at every real position (answer_positions "every")."""

    name = "prefix_parity_test"
    vocab_size = 3
    num_classes = 2
    pad_id = 2
    answer_positions = "every"

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        t = int(lengths.max())
        real = padding_mask(lengths, t)
        bits = torch.randint(0, 2, (lengths.shape[0], t), generator=generator) * real
        targets = torch.where(real, bits.cumsum(1) % 2, torch.full_like(bits, IGNORE_INDEX))
        return TaskBatch(torch.where(real, bits, torch.full_like(bits, self.pad_id)), targets, lengths)


class Echo(PrefixParity):
    """Target = the current bit at every position: learnable by any model in a few steps."""

    name = "echo_test"

    def _generate(self, lengths, generator):
        batch = super()._generate(lengths, generator)
        batch.targets = torch.where(batch.targets == IGNORE_INDEX, batch.targets, batch.inputs)
        return batch


def tiny_config(**changes) -> RunConfig:
    """A run that takes well under a second per few steps on one CPU core."""
    fields = dict(task="parity", mixer="deltanet", n_layers=1, d_model=16, heads=2, steps=8, batch_size=8,
                  train_min=3, train_max=12, eval_min=12, eval_max=20, eval_bins=2, eval_samples=8, log_every=2,
                  chunk_size=16, lr=3e-3, negative_eigenvalues=True)
    fields.update(changes)
    spec = mixer_spec(fields["mixer"])
    for name in GENERIC_FIELDS:  # keep only the size fields the mixer takes
        if name not in spec.fields and name not in changes:
            fields.pop(name, None)
    if not spec.eigenvalue_switch and "negative_eigenvalues" not in changes:
        fields["negative_eigenvalues"] = False
    return RunConfig(**fields)
