"""Where lrnn keeps files it can recompute (the PTD init cache, tokenised corpus shards)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$LRNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/lrnn``, else ``~/.cache/lrnn``."""
    if os.environ.get("LRNN_CACHE_DIR"):
        return Path(os.environ["LRNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lrnn"


def _file_ancestor(path: Path) -> Path | None:
    """The deepest existing ancestor of ``path`` if it is a file (so ``path`` cannot be created), else None."""
    ancestor = next((p for p in path.parents if p.exists()), None)
    return ancestor if ancestor is not None and not ancestor.is_dir() else None


def check_writable_directory(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, after a ValueError naming ``what`` if it cannot be (or become) a directory: it is
    an existing file, or lies under one. For output directories, checked before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is an existing file, not a directory")
    blocker = _file_ancestor(path)
    if blocker is not None:
        raise ValueError(f"{what} {path} cannot be created: {blocker} is a file, not a directory")
    return path


def check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, after a ValueError naming ``what`` if a file could not be written there at the end:
    it is a directory, or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} must name a file, got the directory {path}")
    blocker = _file_ancestor(path)
    if blocker is not None:
        raise ValueError(f"{what} {path} cannot be written: {blocker} is a file, not a directory")
    return path


def check_not_replacing(directory: Path, names: tuple[str, ...] | list[str], overwrite: bool, hint: str) -> None:
    """A ValueError if ``directory`` already holds any of ``names`` and ``overwrite`` is off; ``hint`` says how
    to replace them (e.g. "pass overwrite (--force)")."""
    existing = [name for name in names if (directory / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{directory} already holds {existing}: {hint} to replace them")
