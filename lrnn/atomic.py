"""Atomic file writes (write to a temporary file beside the target, fsync, then rename).

Readers -- and a run interrupted mid-write -- see either the old file or the whole new one, never a
truncated checkpoint, config, cache or plot. Lives at the package root so every layer (the S4D init
cache in ``lrnn.layers`` as much as checkpoints in ``lrnn.models``) can use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# mkstemp creates files readable by the owner only; a finished file gets the mode open() would give it.
# The umask can only be read by setting it, so it is read once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
TEMPORARY_SUFFIX = ".tmp"
"""A temporary file of ``atomic_write`` is named ``.<target name>.<random>.tmp``, beside its target."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to fill a temporary file, then rename it onto ``path``.

    The parent folder is created if needed; the temporary file is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is named like a temporary file of ``atomic_write`` (``.<name>.<random>.tmp``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


def remove_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted ``atomic_write`` calls left in ``directory`` (a process
    killed between mkstemp and the rename cannot remove its own); returns the paths removed.

    Call it only while no other process writes into ``directory``: its temporary files would go too.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    orphans = sorted(p for p in directory.iterdir() if is_temporary(p) and p.is_file())
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write the matplotlib figure ``fig`` to ``path`` as a PNG, atomically (a report's or a training
    curve's plot is never left half-written), and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
