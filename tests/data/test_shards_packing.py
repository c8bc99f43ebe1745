"""Token shards (contents, validation split, cache reuse, atomic writes) and packing (rows, flags, order)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lrnn.data import PackedRows, RowOrder, TextTokenizer, build_shards, corpus_files, is_validation_document
from lrnn.data import train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + "word " * (3 + 2 * i))
    (root / "empty.txt").write_text("")  # skipped: not a document
    tok_dir = tmp_path_factory.mktemp("tok")
    train_tokenizer([p.read_text() for p in sorted(root.iterdir())], 280, tok_dir)
    return root, TextTokenizer(tok_dir)


def test_shards_hold_each_split_documents_with_a_leading_eos(corpus, tmp_path):
    root, tok = corpus
    files = corpus_files([root])
    shards = build_shards(files, tok, tmp_path, val_fraction=0.25)
    docs = [p.read_text() for p in files if p.read_text()]
    expected = {"train": [], "val": []}
    for number, doc in enumerate(docs):
        split = "val" if is_validation_document(number, 0.25) else "train"
        expected[split].append([tok.eos_id] + tok.encode_batch([doc])[0])
    assert [n for n in range(len(docs)) if is_validation_document(n, 0.25)] == [3, 7, 11]  # every 4th
    for split in ("train", "val"):
        assert shards.streams[split].tolist() == [t for doc in expected[split] for t in doc]
        assert shards.starts[split].tolist() == list(np.cumsum([0] + [len(d) for d in expected[split]])[:-1])
        assert shards.index[split]["documents"] == len(expected[split])
        assert isinstance(shards.streams[split], np.memmap)


def test_second_build_reuses_the_cache_and_a_changed_file_does_not(corpus, tmp_path, monkeypatch):
    root, tok = corpus
    files = corpus_files([root])
    first = build_shards(files, tok, tmp_path, 0.25)
    calls = []
    monkeypatch.setattr(TextTokenizer, "encode_batch", lambda self, texts: calls.append(len(texts)) or [])
    again = build_shards(files, tok, tmp_path, 0.25, on_start=lambda: calls.append("start"))
    assert calls == [] and again.directory == first.directory  # not re-tokenised
    monkeypatch.undo()
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 10**9))
    changed = build_shards(files, tok, tmp_path, 0.25)
    assert changed.directory != first.directory and changed.digest != first.digest
    assert build_shards(files, tok, tmp_path, 0.5).digest != changed.digest  # another split: other shards


def test_an_interrupted_build_leaves_no_shards(corpus, tmp_path, monkeypatch):
    root, tok = corpus

    def fail(self, texts):
        raise KeyboardInterrupt
    monkeypatch.setattr(TextTokenizer, "encode_batch", fail)
    with pytest.raises(KeyboardInterrupt):
        build_shards(corpus_files([root]), tok, tmp_path, 0.25)
    assert list((tmp_path / "tokens").iterdir()) == []  # no half-written directory, no temporary one


def test_empty_splits_are_refused(corpus, tmp_path):
    root, tok = corpus
    one = corpus_files([root / "doc00.txt"])
    with pytest.raises(ValueError, match="the val split is empty: the corpus has 1 document"):
        build_shards(one, tok, tmp_path, 0.5)
    with pytest.raises(ValueError, match="holds no text"):
        build_shards(corpus_files([root / "empty.txt"]), tok, tmp_path, 0.5)
    with pytest.raises(ValueError, match=r"val_fraction must lie in \(0, 0.5\]"):
        build_shards(one, tok, tmp_path, 0.75)


def test_packed_rows_flags_and_positions():
    stream = np.arange(100, 121)  # 21 tokens: rows of 5 need 6, so 4 rows
    starts = np.array([0, 3, 4, 12])
    rows = PackedRows(stream, starts, seq_len=5)
    assert rows.num_rows == 4
    batch = rows.batch([0, 2])
    assert batch.inputs.tolist() == [[100, 101, 102, 103, 104], [110, 111, 112, 113, 114]]
    assert batch.targets.tolist() == [[101, 102, 103, 104, 105], [111, 112, 113, 114, 115]]
    # Row 0: documents start at 0, 3, 4. Row 2 (tokens 10-14) begins inside a document, one starts at 12.
    assert batch.seq_starts.tolist() == [[True, False, False, True, True], [True, False, True, False, False]]
    assert batch.positions.tolist() == [[0, 1, 2, 0, 0], [0, 1, 0, 1, 2]]
    with pytest.raises(ValueError, match="seq_len 30 is too long for a stream of 21 tokens"):
        PackedRows(stream, starts, seq_len=30)


def test_row_order_is_a_permutation_per_epoch_and_a_function_of_the_step():
    order = RowOrder(num_rows=7, seed=3)
    epoch0 = order.rows(0, 7)
    assert sorted(epoch0) == list(range(7))
    steps = [RowOrder(7, 3).rows(s, 3) for s in range(5)]  # 15 samples: crosses two epoch boundaries
    flat = [r for rows in steps for r in rows]
    assert flat[:7] == epoch0 and sorted(flat[7:14]) == list(range(7)) and flat[7:14] != epoch0
    assert order.rows(4, 3) == steps[4] and order.rows(1, 3) == steps[1]  # any step, in any order
    assert RowOrder(7, 4).rows(0, 7) != epoch0
