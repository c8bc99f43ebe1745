"""Shared pieces of the pretraining tests: a tiny corpus and a tiny run, as a config and as CLI flags."""

from __future__ import annotations

import random
from pathlib import Path

from lrnn.training.pretrain import PretrainConfig

WORDS = "def class return import for while if else self value count index name (x) [y] = + : , .".split()

TINY_FIELDS = dict(vocab_size=300, d_model=16, n_layers=2, d_intermediate=32, mixer="deltanet", seq_len=32,
                   batch_size=4, steps=4, eval_every=2, log_every=1, checkpoint_every=2, val_fraction=0.1,
                   eval_tokens=256, device="cpu")
"""A model of ~10k parameters on rows of 32 tokens: a step takes milliseconds."""


def make_corpus(root: Path, documents: int = 40) -> Path:
    """``documents`` text files of 60-200 random code-like words (seeded)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        words = [rng.choice(WORDS) for _ in range(rng.randint(60, 200))]
        (root / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n")
    return root


def tiny_config(corpus: Path, **changes) -> PretrainConfig:
    return PretrainConfig(data=[str(corpus)], **{**TINY_FIELDS, **changes})


def tiny_flags(corpus: Path, **changes) -> list[str]:
    """``lrnn pretrain`` flags of ``tiny_config(corpus, **changes)``."""
    flags = ["--data", str(corpus), "--quiet"]
    for name, value in {**TINY_FIELDS, **changes}.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags
