"""``JsonConfig``: the strict dict / JSON-file round trip of lrnn's config dataclasses (models' and runs'
configs, sweep specs). At the package root so that every layer can use it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lrnn.atomic import atomic_write_text


class JsonConfig:
    """Mixin for config dataclasses: a strict dict / JSON-file round trip.

    ``from_dict`` refuses unknown keys (naming them), ``save`` writes atomically, ``load`` names a
    missing or malformed file. ``config_kind`` names the config in error messages.
    """

    config_kind = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise TypeError(f"a {cls.config_kind} must be a JSON object (a mapping), got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.config_kind} key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{cls.config_kind} file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data)
