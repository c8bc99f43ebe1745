"""Model configuration: a dataclass that round-trips through config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrnn.layers import MIXERS, RECURRENT_MIXERS


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
        from lrnn.models.io import atomic_write_text

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


@dataclass
class ModelConfig(JsonConfig):
    """A causal LM (or token classifier): embedding -> n_layers x (norm, mixer, norm, MLP) -> norm -> head.

    Attributes:
        vocab_size: input vocabulary (the LM head's size unless ``num_labels`` is set).
        d_model: residual width. n_layers: number of blocks.
        mixer: one mixer name for every layer, or a list with one name per layer (hybrids).
        attention_every: if > 0, every ``attention_every``-th layer (1-based) is attention instead.
        negative_eigenvalues: the eigenvalue switch of every recurrent mixer ([0, 1] -> [-1, 1]).
        mixer_kwargs: per mixer name, keyword arguments for its constructor
            (e.g. ``{"mamba2": {"headdim": 32}, "deltanet": {"num_heads": 4}}``).
        d_intermediate: hidden size of the gated MLP after each mixer (0: no MLP, as in Mamba).
        tie_embeddings: share the embedding matrix with the LM head.
        num_labels: if set, a token-classification head with this many classes replaces the LM head.
        pad_vocab_size_multiple: round the embedding rows up to a multiple of this.
        norm_eps: epsilon of the RMSNorms.
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    mixer: str | list[str] = "mamba2"
    attention_every: int = 0
    negative_eigenvalues: bool = False
    mixer_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    d_intermediate: int = 0
    tie_embeddings: bool = True
    num_labels: int | None = None
    pad_vocab_size_multiple: int = 1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "pad_vocab_size_multiple"):
            check_int(name, getattr(self, name), 1)
        check_int("attention_every", self.attention_every, 0)
        check_int("d_intermediate", self.d_intermediate, 0)
        if self.num_labels is not None:
            check_int("num_labels", self.num_labels, 1)
        if not isinstance(self.negative_eigenvalues, bool):
            raise TypeError(f"negative_eigenvalues must be a bool, got {self.negative_eigenvalues!r}")
        if not isinstance(self.mixer_kwargs, dict) or not all(isinstance(v, dict) for v in self.mixer_kwargs.values()):
            raise TypeError("mixer_kwargs must map mixer names to dicts of constructor arguments, "
                            f"got {self.mixer_kwargs!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        names = self.layer_mixers()
        unknown = sorted({n for n in names if n not in MIXERS} | {n for n in self.mixer_kwargs if n not in MIXERS})
        if unknown:
            raise ValueError(f"unknown mixer name(s) {unknown}; known: {sorted(MIXERS)}")

    def layer_mixers(self) -> list[str]:
        """The mixer name of each layer."""
        if isinstance(self.mixer, str):
            names = [self.mixer] * self.n_layers
        elif isinstance(self.mixer, (list, tuple)) and all(isinstance(m, str) for m in self.mixer):
            names = list(self.mixer)
            if len(names) != self.n_layers:
                raise ValueError(f"mixer lists {len(names)} layers but n_layers = {self.n_layers}")
        else:
            raise TypeError(f"mixer must be a name or a list of names, got {self.mixer!r}")
        if self.attention_every:
            names = ["attention" if (i + 1) % self.attention_every == 0 else m for i, m in enumerate(names)]
        return names

    def mixer_arguments(self, name: str) -> dict[str, Any]:
        """Constructor keyword arguments of mixer ``name`` (the eigenvalue switch included)."""
        kwargs = dict(self.mixer_kwargs.get(name, {}))
        if name in RECURRENT_MIXERS:
            kwargs.setdefault("negative_eigenvalues", self.negative_eigenvalues)
        return kwargs

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise a clear TypeError / ValueError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
