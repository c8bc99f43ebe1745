"""Tokenizers for pretraining: train a byte-level BPE on a corpus, or read a given ``tokenizer.json``.

Byte-level BPE (GPT-2's scheme, with the ``tokenizers`` library) starts from the 256 byte symbols, so any
text encodes and decodes back exactly; merges are learnt up to ``vocab_size`` tokens. The end-of-document
token ``EOS_TOKEN`` is a special token: it separates the packed documents and stops ``lrnn generate``.
A trained tokenizer is written as ``tokenizer.json`` plus a ``tokenizer_config.json`` naming the EOS
token, which is where ``lrnn.models.tokenizer.Tokenizer`` (what ``lrnn generate`` reads) finds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from lrnn.atomic import atomic_write, atomic_write_text
from lrnn.models.tokenizer import TOKENIZER_NAME
from lrnn.validation import check_int

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
MIN_VOCAB_SIZE = 257
"""The 256 byte symbols plus the end-of-document token."""


def train_tokenizer(documents: Iterable[str], vocab_size: int, out_dir: str | Path,
                    eos_token: str = EOS_TOKEN) -> Path:
    """Train a byte-level BPE with ``vocab_size`` tokens (``eos_token`` included) on ``documents`` and write
    ``out_dir/tokenizer.json`` and ``out_dir/tokenizer_config.json`` (each atomically). Returns the
    tokenizer.json path. Deterministic: the same documents in the same order give the same file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_int("vocab_size", vocab_size, MIN_VOCAB_SIZE)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos_token], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents, trainer)
    out_dir = Path(out_dir)
    path = out_dir / TOKENIZER_NAME
    atomic_write(path, lambda tmp: tokenizer.save(tmp))
    write_tokenizer_config(out_dir, eos_token)
    return path


def write_tokenizer_config(directory: Path, eos_token: str) -> None:
    """``tokenizer_config.json`` naming the EOS token (HF's file; ``lrnn generate`` stops at that token)."""
    atomic_write_text(directory / TOKENIZER_CONFIG_NAME, json.dumps({"eos_token": eos_token}, indent=2) + "\n")


class TextTokenizer:
    """A ``tokenizer.json`` for pretraining: batch encoding, its end-of-document id and a content hash.

    ``path`` is the file or a directory holding it. ``eos_token`` must be in its vocabulary (a
    ValueError says otherwise: the documents could not be separated).
    """

    def __init__(self, path: str | Path, eos_token: str = EOS_TOKEN) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        self.path = path / TOKENIZER_NAME if path.is_dir() else path
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        data = self.path.read_bytes()
        try:
            self._tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as err:  # tokenizers raises its own Exception subclass for a bad file
            raise ValueError(f"cannot read tokenizer {self.path}: {err}") from None
        self.eos_token = eos_token
        eos_id = self._tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"tokenizer {self.path} has no end-of-document token {eos_token!r} "
                             "(train one with `lrnn tokenizer train`, which adds it)")
        self.eos_id: int = eos_id
        self.sha256 = hashlib.sha256(data).hexdigest()

    @property
    def vocab_size(self) -> int:
        """Token ids lie in [0, vocab_size): a model needs at least this vocabulary."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens added), encoded in parallel by ``tokenizers``."""
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` with the end-of-document tokens left out."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        """Copy tokenizer.json into ``directory`` with a tokenizer_config.json naming the EOS token."""
        directory = Path(directory)
        data = self.path.read_bytes()

        def write(tmp: str) -> None:
            Path(tmp).write_bytes(data)
        atomic_write(directory / TOKENIZER_NAME, write)
        write_tokenizer_config(directory, self.eos_token)
