"""Model configuration: a dataclass that round-trips through config.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lrnn.jsonconfig import JsonConfig
from lrnn.layers import MIXERS, mixer_spec
from lrnn.validation import check_flag, check_int


@dataclass
class ModelConfig(JsonConfig):
    """A causal LM (or token classifier): embedding -> n_layers x (norm, mixer, norm, MLP) -> norm -> head.

    Attributes:
        vocab_size: input vocabulary (the LM head's size unless ``num_labels`` is set).
        d_model: residual width. n_layers: number of blocks.
        mixer: one mixer name for every layer, or a list with one name per layer (hybrids).
        attention_every: if > 0, every ``attention_every``-th layer (1-based) is attention instead.
        negative_eigenvalues: the eigenvalue switch of every recurrent mixer ([0, 1] -> [-1, 1]); True
            needs at least one layer whose mixer has the switch.
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
        check_flag("negative_eigenvalues", self.negative_eigenvalues)
        if not isinstance(self.mixer_kwargs, dict) or not all(isinstance(v, dict) for v in self.mixer_kwargs.values()):
            raise TypeError("mixer_kwargs must map mixer names to dicts of constructor arguments, "
                            f"got {self.mixer_kwargs!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        names = self.layer_mixers()
        unknown = sorted({n for n in names if n not in MIXERS} | {n for n in self.mixer_kwargs if n not in MIXERS})
        if unknown:
            raise ValueError(f"unknown mixer name(s) {unknown}; known: {sorted(MIXERS)}")
        if self.negative_eigenvalues and not any(mixer_spec(n).eigenvalue_switch for n in names):
            mixer_spec(names[0]).check_eigenvalue_switch(True)  # no layer has the switch: say so
        for name, kwargs in self.mixer_kwargs.items():
            if "negative_eigenvalues" in kwargs:
                raise ValueError(f"mixer_kwargs[{name!r}] sets negative_eigenvalues: the eigenvalue range is "
                                 "ModelConfig.negative_eigenvalues (one switch for every recurrent layer)")

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
        """Constructor keyword arguments of mixer ``name`` (the eigenvalue switch included, for the mixers
        that have it; in a hybrid, attention layers simply have none)."""
        kwargs = dict(self.mixer_kwargs.get(name, {}))
        if mixer_spec(name).eigenvalue_switch:
            kwargs["negative_eigenvalues"] = self.negative_eigenvalues
        return kwargs

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m
