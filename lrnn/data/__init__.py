"""Text corpora for language-model pretraining: reading documents, tokenizers, cached token shards, packing.

``corpus_files`` expands the user's paths (text files, JSONL with a ``text`` field, parquet; directories
recursively) or, with none, lists the default corpus (the Python standard library's ``*.py`` files);
``iter_documents`` streams one file's documents. ``train_tokenizer`` trains a byte-level BPE with an
end-of-document token; ``TextTokenizer`` reads one. ``build_shards`` tokenises a corpus once into
memory-mapped train / validation streams (a deterministic split by document) cached on disk, and
``PackedRows`` cuts a stream into fixed-length rows of whole and partial documents with their
document-start flags; ``RowOrder`` fixes each step's rows from the step and the seed.
"""

from lrnn.data.corpus import (DEFAULT_CORPUS, TEXT_SUFFIXES, check_has_text, corpus_files, default_corpus_files,
                              iter_corpus, iter_documents)
from lrnn.data.packing import PackedBatch, PackedRows, RowOrder
from lrnn.data.shards import TokenShards, build_shards, is_validation_document
from lrnn.data.tokenizer import EOS_TOKEN, TextTokenizer, train_tokenizer

__all__ = ["DEFAULT_CORPUS", "TEXT_SUFFIXES", "check_has_text", "corpus_files", "default_corpus_files",
           "iter_documents", "iter_corpus", "PackedBatch", "PackedRows", "RowOrder", "TokenShards", "build_shards",
           "is_validation_document", "EOS_TOKEN", "TextTokenizer", "train_tokenizer"]
