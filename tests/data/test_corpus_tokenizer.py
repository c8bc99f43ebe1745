"""Corpus files and documents (text, JSONL, parquet, the default corpus) and the byte-level BPE tokenizer."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from lrnn.data import (EOS_TOKEN, TextTokenizer, check_has_text, corpus_files, default_corpus_files, iter_corpus,
                       iter_documents, train_tokenizer)
from lrnn.models.tokenizer import Tokenizer

SAMPLES = ["def f(x):\n    return x ** 2  # square\n", "naïve café, 中文字符, emoji \U0001F600 and tabs\t\tend",
           "    indented\r\nwindows line\n\n\nblank lines", "", " leading space", "<|endoftext|>"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    docs = [f"def function_{i}(value):\n    return value + {i}\n" for i in range(50)] + SAMPLES
    train_tokenizer(docs, 300, out)
    return out


def test_tokenizer_round_trip_and_eos(tokenizer_dir):
    tok = TextTokenizer(tokenizer_dir)
    assert tok.vocab_size <= 300 and tok.path == tokenizer_dir / "tokenizer.json"
    texts = SAMPLES[:-1] + ["unseen words: Ωmega ∑ ≠ 𝔘nicode"]
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert tok.decode(ids) == text  # byte-level: any text comes back exactly
        assert tok.eos_id not in ids
    assert tok.encode_batch([EOS_TOKEN])[0] == [tok.eos_id]  # the special token is one id
    # What `lrnn generate` reads finds the same end-of-document id (tokenizer_config.json names it).
    assert Tokenizer(tokenizer_dir).eos_token_id == tok.eos_id


def test_tokenizer_training_is_deterministic(tmp_path, tokenizer_dir):
    docs = [f"def function_{i}(value):\n    return value + {i}\n" for i in range(50)] + SAMPLES
    train_tokenizer(docs, 300, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()


def test_tokenizer_errors(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="vocab_size must be >= 257"):
        train_tokenizer(["abc"], 100, tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        TextTokenizer(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no end-of-document token '<eos>'"):
        TextTokenizer(tokenizer_dir, eos_token="<eos>")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        TextTokenizer(tmp_path / "bad.json")


def test_corpus_files_expand_directories_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("z")
    (tmp_path / "b" / "a.txt").write_text("a")
    (tmp_path / "b" / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: not taken from a directory
    (tmp_path / "b" / ".hidden").mkdir()
    (tmp_path / "b" / ".hidden" / "h.txt").write_text("h")
    (tmp_path / "c.weird").write_text("named on its own: read")
    files = corpus_files([tmp_path / "c.weird", tmp_path / "b", tmp_path / "b" / "a.txt"])
    assert [p.name for p in files] == ["c.weird", "a.txt", "z.py"]  # order kept, duplicates dropped
    assert list(iter_corpus(files)) == ["named on its own: read", "a", "z"]
    with pytest.raises(FileNotFoundError, match="corpus path not found: .*missing"):
        corpus_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="hold no readable files"):
        corpus_files([tmp_path / "empty"])
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(ValueError, match="holds no text"):
        check_has_text(corpus_files([tmp_path / "blank.txt"]))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        list(iter_documents(tmp_path / "latin1.txt"))


def test_jsonl_and_parquet_documents(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate("xyz")))
    pq.write_table(pa.table({"text": ["p1", "p2"], "n": [1, 2]}), tmp_path / "b.parquet")
    assert list(iter_corpus(corpus_files([tmp_path]))) == ["x", "y", "z", "p1", "p2"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"content": "no text field"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: record 0 needs a string 'text' field.*content"):
        list(iter_documents(tmp_path / "bad.jsonl"))


def test_default_corpus_is_the_standard_library():
    files = default_corpus_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert len(files) > 500 and files == sorted(files)
    assert all(p.suffix == ".py" and root in p.parents for p in files)
    assert not any(part in ("site-packages", "dist-packages") for p in files for part in p.relative_to(root).parts)
    assert root / "argparse.py" in files
