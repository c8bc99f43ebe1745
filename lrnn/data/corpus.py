"""Corpus files and their documents: plain text, JSONL (a ``text`` field) and parquet, or the default corpus.

A document is a whole plain-text file, one JSONL line's ``text`` or one parquet row's ``text``. JSONL and
parquet are streamed with the ``datasets`` library (``pip install lrnn[data]``), so a corpus larger than
memory is never loaded whole; plain text needs nothing beyond the standard library.

**The default corpus** (no paths given) is the Python standard library's own source: every ``*.py`` file
under ``sysconfig.get_paths()["stdlib"]``, outside ``site-packages`` / ``dist-packages`` (installed
packages, not the standard library), that is valid UTF-8, in sorted path order. It is present on every
machine that has Python, so a pretraining run needs no download. CPython 3.11 on Linux: 1786 files, 31.5
MB (its four test files in other encodings -- ISO-8859-1, KOI8-R -- are left out).
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py", ".c", ".h", ".cpp", ".js", ".ts", ".java", ".go", ".rs",
                 ".tex", ".html", ".css", ".sh")
"""Suffixes of the plain-text files taken from a directory (a file named on its own is read whatever its suffix)."""
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
TEXT_FIELD = "text"
DEFAULT_CORPUS = "python-stdlib"
"""The name logs and result files give the default corpus."""
_INSTALLED_PACKAGE_DIRS = ("site-packages", "dist-packages")


def default_corpus_files() -> list[Path]:
    """The default corpus: the standard library's ``*.py`` files that are valid UTF-8, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        if any(part in _INSTALLED_PACKAGE_DIRS for part in path.relative_to(root).parts) or not path.is_file():
            continue
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # a test file written in another encoding on purpose
            continue
        files.append(path)
    return files


def corpus_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files of a corpus given as files and directories, each directory expanded recursively into its
    files with a suffix of ``TEXT_SUFFIXES``, ``.jsonl``, ``.json`` or ``.parquet`` (hidden files and
    folders skipped), sorted within it; the order of ``paths`` is kept and a file listed twice is read once.

    Raises FileNotFoundError naming a path that does not exist, ValueError if there is no file at all.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no corpus paths given (give files or directories, or none at all for the default "
                         "corpus)")
    wanted = set(TEXT_SUFFIXES) | set(JSONL_SUFFIXES) | set(PARQUET_SUFFIXES)
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"corpus path not found: {path}")
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            files.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        raise ValueError(f"the corpus paths {[str(p) for p in paths]} hold no readable files (directories are "
                         f"searched for {', '.join(sorted(wanted))})")
    return unique


def iter_documents(path: Path) -> Iterator[str]:
    """The documents of one corpus file, streamed: the whole file for plain text (UTF-8), each line's
    ``text`` for JSONL, each row's ``text`` for parquet. A file that is not UTF-8, or a record without a
    string ``text``, raises a ValueError naming the file."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES or suffix in PARQUET_SUFFIXES:
        yield from _iter_records(path, "json" if suffix in JSONL_SUFFIXES else "parquet")
        return
    try:
        yield path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {path} is not UTF-8 text ({err})") from None


def iter_corpus(files: Iterable[Path]) -> Iterator[str]:
    """Every non-empty document of ``files``, in order (an empty document would train nothing)."""
    for path in files:
        for text in iter_documents(path):
            if text:
                yield text


def check_has_text(files: list[Path]) -> None:
    """Raise a ValueError unless some file of the corpus holds a non-empty document (reads up to the first)."""
    if next(iter_corpus(files), None) is None:
        raise ValueError(f"the corpus ({len(files)} file(s), e.g. {files[0]}) holds no text: every document is "
                         "empty")


def _iter_records(path: Path, builder: str) -> Iterator[str]:
    """The ``text`` field of each record of a JSONL or parquet file, streamed by ``datasets``."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"reading {path} needs the 'datasets' package: pip install 'lrnn[data]' "
                          "(plain text files need nothing)") from None
    try:
        records = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
        for number, record in enumerate(records):
            text = record.get(TEXT_FIELD)
            if not isinstance(text, str):
                what = (f"a {type(text).__name__}" if TEXT_FIELD in record
                        else f"no such field (fields: {sorted(record)})")
                raise ValueError(f"corpus file {path}: record {number} needs a string {TEXT_FIELD!r} field, "
                                 f"got {what}")
            yield text
    except ValueError:
        raise
    except Exception as err:  # pyarrow / datasets raise their own types for a malformed file: name the file
        raise ValueError(f"cannot read corpus file {path} as {builder}: {type(err).__name__}: {err}") from None
