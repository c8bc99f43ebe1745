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
