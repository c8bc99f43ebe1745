"""Shared helpers for the model tests: tiny seeded models, error metric, one-thread fixture.

Kept in a uniquely named module rather than in ``conftest.py``: the ``tests/ops`` tests do
``from conftest import ...``, and a second ``conftest`` module on the path would shadow theirs whenever
both directories are passed to pytest on one command line.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import MIXERS, RECURRENT_MIXERS
from lrnn.models import LanguageModel, ModelConfig
from lrnn.testing import assert_relative_close as assert_close, relative_error as rel_err

F64 = torch.float64
F32 = torch.float32
TOL = {F64: 1e-10, F32: 1e-4}

VOCAB = 40
D_MODEL = 16

# Small constructor arguments for every mixer (its registry entry's ``small``: chunk sizes below the
# test lengths, so sequences span several chunks).
TINY_MIXER_KWARGS = {name: dict(spec.small) for name, spec in MIXERS.items()}
ALL_MIXERS = sorted(MIXERS)


def tiny_config(mixer="mamba2", n_layers=2, **overrides) -> ModelConfig:
    """A 16-wide config with a small MLP and tiny mixers; ``overrides`` replace any field."""
    names = [mixer] if isinstance(mixer, str) else list(mixer)
    fields = dict(vocab_size=VOCAB, d_model=D_MODEL, n_layers=n_layers, mixer=mixer, d_intermediate=32,
                  negative_eigenvalues=any(is_recurrent(n) for n in names),  # [-1, 1] wherever there is a switch
                  mixer_kwargs={k: dict(v) for k, v in TINY_MIXER_KWARGS.items()})
    fields.update(overrides)
    return ModelConfig(**fields)


def build_model(config: ModelConfig, dtype=F64, seed: int = 0, embedding_std: float = 1.0) -> LanguageModel:
    """A seeded model in eval mode. The embedding is redrawn with ``embedding_std`` (default 1, not the
    0.02 init) so that logits are spread out and greedy decoding visits many tokens."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LanguageModel(config)
        if embedding_std is not None:
            torch.nn.init.normal_(model.embedding.weight, std=embedding_std)
    return model.to(dtype).eval()


def random_ids(batch: int, time: int, seed: int = 1, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, time), generator=torch.Generator().manual_seed(seed))


def is_recurrent(name: str) -> bool:
    return name in RECURRENT_MIXERS


@pytest.fixture(scope="module")
def single_threaded():
    """Run a module's tests with one intra-op thread, then restore the previous count.

    The tensors here are tiny: a second thread only adds synchronisation, and on a shared two-core
    machine a busy neighbour makes every multi-threaded op wait (measured: ~10x slower runs).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
