"""Tokenised corpora cached on disk: a train and a validation token stream, memory-mapped.

``build_shards(files, tokenizer, cache_dir)`` tokenises the corpus once and writes, into
``cache_dir/tokens/<key>/``::

    train.bin, val.bin                 the token streams (uint16, or uint32 for vocabularies over 65536)
    train_starts.npy, val_starts.npy   where each document starts in its stream (int64 offsets)
    index.json                         what was tokenised: the key's inputs, counts of tokens, documents, bytes

Each document is written as ``[eos] + tokens(document)``: the end-of-document token separates documents
and also starts each one, so a model learns the first token of a document from a fresh start and the
end of a document as the next document's eos. The key hashes the corpus files' resolved paths, sizes and
modification times, the tokenizer file's SHA-256, the EOS id and the split, so a second run over the
same corpus reuses the shards and a changed file or tokenizer makes new ones. The directory is written
under a temporary name and renamed when complete: a run killed mid-way leaves no half-written shards.

**Validation split, by document**: documents are numbered in corpus order (files in the order
``corpus_files`` gives, records in file order, empty documents skipped); with ``val_fraction = f``, every
``k``-th one, ``k = round(1 / f)`` (documents ``k-1, 2k-1, ...``), is held out. Deterministic, spread over
the whole corpus, and independent of the tokenizer. Default corpus, f = 0.02: 35 of its 1786 files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrnn.atomic import atomic_write_text
from lrnn.data.corpus import iter_corpus
from lrnn.data.tokenizer import TextTokenizer
from lrnn.validation import check_number

SHARD_FORMAT = 1
"""Bumped when the layout changes, so old caches are not misread."""
INDEX_NAME = "index.json"
SPLITS = ("train", "val")
_ENCODE_BATCH = 256
"""Documents per ``encode_batch`` call: parallel encoding without holding the corpus in memory."""


def validation_stride(val_fraction: float) -> int:
    """``k = round(1 / val_fraction)``: every k-th document is held out."""
    check_number("val_fraction", val_fraction, 0.0, strict=True)
    if val_fraction > 0.5:
        raise ValueError(f"val_fraction must lie in (0, 0.5], got {val_fraction}")
    return round(1 / val_fraction)


def is_validation_document(number: int, val_fraction: float) -> bool:
    """Whether document ``number`` (0-based, in corpus order) belongs to the validation split."""
    stride = validation_stride(val_fraction)
    return number % stride == stride - 1


def corpus_fingerprint(files: Iterable[Path]) -> list[list]:
    """``[resolved path, size, mtime_ns]`` of each file: what makes a cached tokenisation stale."""
    fingerprint = []
    for path in files:
        stat = Path(path).stat()
        fingerprint.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return fingerprint


def shard_key(files: list[Path], tokenizer: TextTokenizer, val_fraction: float) -> dict:
    """The inputs that determine the shards (hashed into the cache directory's name)."""
    return {"format": SHARD_FORMAT, "files": corpus_fingerprint(files), "tokenizer_sha256": tokenizer.sha256,
            "eos_id": tokenizer.eos_id, "val_fraction": val_fraction}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass
class TokenShards:
    """A cached tokenisation: the memory-mapped ``train`` / ``val`` streams and their document starts."""

    directory: Path
    index: dict
    streams: dict[str, np.ndarray]
    starts: dict[str, np.ndarray]

    @property
    def digest(self) -> str:
        """The SHA-256 of the key: names the corpus + tokenizer + split a checkpoint was trained on."""
        return self.index["digest"]

    @classmethod
    def open(cls, directory: Path) -> "TokenShards":
        index = json.loads((directory / INDEX_NAME).read_text())
        dtype = np.dtype(index["dtype"])
        streams, starts = {}, {}
        for split in SPLITS:
            count = index[split]["tokens"]
            streams[split] = np.memmap(directory / f"{split}.bin", dtype=dtype, mode="r", shape=(count,))
            starts[split] = np.load(directory / f"{split}_starts.npy")
        return cls(directory, index, streams, starts)

    def summary(self) -> str:
        """One line: documents, tokens and bytes per token of each split."""
        parts = []
        for split in SPLITS:
            s = self.index[split]
            parts.append(f"{split} {s['documents']} documents, {s['tokens']:,} tokens "
                         f"({s['bytes'] / max(s['tokens'], 1):.2f} bytes/token)")
        return "; ".join(parts)


def build_shards(files: list[Path], tokenizer: TextTokenizer, cache_dir: str | Path, val_fraction: float,
                 on_start: Callable[[], None] | None = None) -> TokenShards:
    """The shards of ``files`` under ``tokenizer``: read from ``cache_dir/tokens/`` if a run made them
    before, else tokenised now (``on_start`` is called first, e.g. to say so) and cached.

    Raises ValueError if the corpus has no non-empty document or if either split would be empty.
    """
    key = shard_key(files, tokenizer, val_fraction)
    digest = _digest(key)
    root = Path(cache_dir) / "tokens"
    directory = root / digest[:24]
    if (directory / INDEX_NAME).is_file():
        shards = TokenShards.open(directory)
        if shards.index.get("digest") == digest:
            return shards
    if on_start is not None:
        on_start()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=root))
    try:
        index = _tokenise(files, tokenizer, val_fraction, tmp)
        index.update(key=key, digest=digest)
        atomic_write_text(tmp / INDEX_NAME, json.dumps(index, indent=2) + "\n")
        if directory.exists():  # a stale or foreign directory of this name (a digest prefix clash): replace it
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenShards.open(directory)


def _tokenise(files: list[Path], tokenizer: TextTokenizer, val_fraction: float, out: Path) -> dict:
    """Write both splits' streams and starts into ``out``; returns the index's counts."""
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32)
    counts = {split: {"tokens": 0, "documents": 0, "bytes": 0} for split in SPLITS}
    starts: dict[str, list[int]] = {split: [] for split in SPLITS}
    streams = {split: open(out / f"{split}.bin", "wb") for split in SPLITS}
    number = 0
    try:
        for batch in _batches(iter_corpus(files), _ENCODE_BATCH):
            for doc, ids in zip(batch, tokenizer.encode_batch(batch)):
                split = "val" if is_validation_document(number, val_fraction) else "train"
                tokens = np.asarray([tokenizer.eos_id, *ids], dtype=dtype)
                starts[split].append(counts[split]["tokens"])
                streams[split].write(tokens.tobytes())
                counts[split]["tokens"] += len(tokens)
                counts[split]["documents"] += 1
                counts[split]["bytes"] += len(doc.encode("utf-8"))
                number += 1
    finally:
        for stream in streams.values():
            stream.close()
    if number == 0:
        raise ValueError(f"the corpus ({len(files)} file(s), e.g. {files[0]}) holds no text: every document is "
                         "empty")
    stride = validation_stride(val_fraction)
    for split in SPLITS:
        if counts[split]["documents"] == 0:
            raise ValueError(f"the {split} split is empty: the corpus has {number} document(s) and every "
                             f"{stride}-th one (val_fraction {val_fraction}) is held out for validation; give "
                             "more documents or another val_fraction")
        np.save(out / f"{split}_starts.npy", np.asarray(starts[split], dtype=np.int64))
    return {"format": SHARD_FORMAT, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id, **counts}


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
