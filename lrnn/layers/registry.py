"""The mixer registry: one ``MixerSpec`` per token mixer, declared by the mixer's own module.

A spec is everything the rest of lrnn knows about a mixer: how to build it, whether it has the eigenvalue
switch (``negative_eigenvalues``), which of the generic model-size fields of a run config (``heads``,
``n_h``, ``d_state``, ``chunk_size``) it takes and how they map onto its constructor, its display label,
and its variant in a sweep's model list (``"deltaproduct:2"`` sets n_h, ``"s4d:ptd"`` the S4D init).
Configs, sweeps, reports, the command line and the checks read the registry; adding a mixer means
writing its module (which calls ``register``) and its tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

GENERIC_FIELDS = ("heads", "n_h", "d_state", "chunk_size")
"""Model-size fields shared by run configs; each mixer says which it takes (``MixerSpec.fields``)."""

FieldRule = Callable[[int, int, Mapping[str, Any]], dict[str, Any]]
"""``rule(value, d_model, mixer_kwargs) -> constructor arguments`` for a generic field that does not map
onto one constructor argument one to one (Mamba-2's ``heads`` sets ``headdim``)."""


def constructor_default(build: Callable[..., nn.Module], argument: str) -> Any:
    """The default of ``argument`` in ``build``'s signature, looking through base classes' ``__init__``.

    Raises ``LookupError`` if no signature on the way declares it with a default."""
    candidates = build.__mro__ if isinstance(build, type) else (build,)
    for candidate in candidates:
        if candidate is nn.Module or candidate is object:
            break
        parameter = inspect.signature(candidate).parameters.get(argument)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise LookupError(f"{getattr(build, '__name__', build)} has no default for {argument!r}")


@dataclass(frozen=True)
class Variant:
    """A mixer's variant axis, written ``"name:VALUE"`` in a sweep's model list.

    Attributes:
        argument: the constructor argument it sets ("num_householder", "init").
        generic_field: the generic run-config field that carries it ("n_h"), or None: it goes into
            ``mixer_kwargs`` under ``argument``.
        choices: allowed values -> display names (S4D inits); None: a positive integer.
        label: format of the model label, with ``{label}`` (the mixer's), ``{value}`` and ``{display}``.
        tag: format of the run-name part, with ``{name}`` and ``{value}``.
        show_default: whether the label and tag show the variant at its default value.
    """

    argument: str
    generic_field: str | None = None
    choices: Mapping[str, str] | None = None
    label: str = "{label} {value}"
    tag: str = "{name}{value}"
    show_default: bool = True

    def parse(self, model: str, text: str) -> Any:
        """The value of ``"name:TEXT"``: a choice, or a positive integer."""
        what = self.generic_field or self.argument
        if self.choices is not None:
            if text not in self.choices:
                raise ValueError(f"the {what} of model {model!r} must be one of {list(self.choices)}, got {text!r}")
            return text
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"the {what} of model {model!r} must be a positive integer, got {text!r}")
        return int(text)


@dataclass(frozen=True)
class MixerSpec:
    """What lrnn knows about one mixer.

    Attributes:
        name: the config name ("mamba2"). label: the display name ("Mamba-2"). summary: one line for help.
        build: ``build(d_model, **kwargs) -> nn.Module``.
        eigenvalue_switch: whether ``build`` takes ``negative_eigenvalues`` ([0, 1] -> [-1, 1]).
        fields: generic field -> the constructor argument it sets, or a ``FieldRule``.
        variant: its ``"name:VALUE"`` axis in sweeps, if any.
        small: small constructor arguments for smoke tests and device checks (chunk sizes that make a few
            dozen tokens span several chunks).
        core_flops: ``core_flops(layer, T) -> int``, the forward token-mixing FLOPs per position of a
            built layer on length-T sequences, beyond its ``nn.Linear`` projections (model-FLOP
            accounting, ``lrnn bench train``); None: no rule.
    """

    name: str
    label: str
    summary: str
    build: Callable[..., nn.Module]
    eigenvalue_switch: bool = False
    fields: Mapping[str, str | FieldRule] = field(default_factory=dict)
    variant: Variant | None = None
    small: Mapping[str, Any] = field(default_factory=dict)
    core_flops: Callable[[nn.Module, int], int] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fields) - set(GENERIC_FIELDS))
        if unknown:
            raise ValueError(f"mixer {self.name!r}: fields {unknown} are not generic fields {GENERIC_FIELDS}")

    def __call__(self, d_model: int, **kwargs: Any) -> nn.Module:
        return self.build(d_model, **kwargs)

    def default(self, argument: str) -> Any:
        """The constructor default of ``argument`` (e.g. ``default("chunk_size")``)."""
        return constructor_default(self.build, argument)

    @property
    def chunk_size(self) -> int | None:
        """The default chunk length of its chunked scan; None for mixers without one, or whose layer picks it
        from its size (the DeltaNet family: ``lrnn.ops.delta_chunk_size(head_dim)``)."""
        return self.default("chunk_size") if "chunk_size" in self.fields else None

    def arguments(self, d_model: int, generic: Mapping[str, Any], mixer_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments from generic fields (None = the mixer's default) and ``mixer_kwargs``.

        A generic field the mixer does not take, or one that contradicts ``mixer_kwargs``, raises a
        ValueError naming both. The eigenvalue switch is not handled here (see ``check_eigenvalue_switch``).
        """
        derived: dict[str, Any] = {}
        source: dict[str, str] = {}
        for name, value in generic.items():
            if value is None:
                continue
            if name not in self.fields:
                takes = ", ".join(self.fields) or "none of them"
                raise ValueError(f"mixer {self.name!r} has no {name} (of {', '.join(GENERIC_FIELDS)} it takes "
                                 f"{takes}); got {name}={value!r}")
            rule = self.fields[name]
            for argument, setting in (rule(value, d_model, mixer_kwargs) if callable(rule) else {rule: value}).items():
                derived[argument], source[argument] = setting, f"{name}={value!r}"
        for argument, setting in derived.items():
            if argument in mixer_kwargs and mixer_kwargs[argument] != setting:
                raise ValueError(f"{source[argument]} sets {self.name}'s {argument}={setting!r}, but mixer_kwargs "
                                 f"sets {argument}={mixer_kwargs[argument]!r}: give one of them")
        return {**derived, **mixer_kwargs}

    def check_eigenvalue_switch(self, negative_eigenvalues: bool) -> None:
        """Raise a ValueError if the [-1, 1] range is asked of a mixer without the switch."""
        if negative_eigenvalues and not self.eigenvalue_switch:
            with_switch = ", ".join(n for n, s in MIXERS.items() if s.eigenvalue_switch)
            raise ValueError(f"mixer {self.name!r} has no eigenvalue switch: negative_eigenvalues=True applies to "
                             f"{with_switch}")

    def parse_variant(self, model: str, text: str) -> dict[str, Any]:
        """Run-config fields for ``"name:TEXT"``: ``{"n_h": 2}`` or ``{"mixer_kwargs": {"init": "ptd"}}``."""
        if self.variant is None:
            raise ValueError(f"model {model!r}: mixer {self.name!r} has no ':' variant "
                             f"(mixers with one: {', '.join(n for n, s in MIXERS.items() if s.variant)})")
        value = self.variant.parse(model, text)
        if self.variant.generic_field is not None:
            return {self.variant.generic_field: value}
        return {"mixer_kwargs": {self.variant.argument: value}}

    def _variant_value(self, arguments: Mapping[str, Any]) -> tuple[Any, bool]:
        """(the variant's value in ``arguments`` or its default, whether it shows)."""
        default = self.default(self.variant.argument)
        value = arguments.get(self.variant.argument, default)
        return value, self.variant.show_default or value != default

    def display_label(self, arguments: Mapping[str, Any]) -> str:
        """The model label of a mixer built with ``arguments``: "DeltaProduct n_h=2", "S4D-PTD", "Mamba-2"."""
        if self.variant is None:
            return self.label
        value, shown = self._variant_value(arguments)
        if not shown:
            return self.label
        display = self.variant.choices.get(value, value) if self.variant.choices else value
        return self.variant.label.format(label=self.label, value=value, display=display)

    def tag(self, arguments: Mapping[str, Any]) -> str:
        """The model part of a run name: "deltaproduct2", "s4d-ptd", "mamba2"."""
        if self.variant is None:
            return self.name
        value, shown = self._variant_value(arguments)
        return self.variant.tag.format(name=self.name, value=value) if shown else self.name


MIXERS: dict[str, MixerSpec] = {}
"""Mixer name -> its spec, in registration order (filled as ``lrnn.layers`` imports the mixer modules)."""


def register(spec: MixerSpec) -> MixerSpec:
    """Add ``spec`` to ``MIXERS`` (a mixer module calls this once, at import)."""
    if spec.name in MIXERS and MIXERS[spec.name] != spec:
        raise ValueError(f"a mixer named {spec.name!r} is registered already")
    MIXERS[spec.name] = spec
    return spec


def mixer_spec(name: object) -> MixerSpec:
    """The spec of mixer ``name``; a ValueError lists the known names."""
    if not isinstance(name, str) or name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; known: {', '.join(MIXERS)}")
    return MIXERS[name]


def build_mixer(name: str, d_model: int, **kwargs: Any) -> nn.Module:
    """Build mixer ``name``: ``[B, T, d_model] -> [B, T, d_model]``."""
    return mixer_spec(name).build(d_model, **kwargs)


def label_order(label: str) -> tuple[int, int, str]:
    """A sort key for model labels: registration order of the mixer, then its variant's order (S4D inits
    as listed), then the label itself ("DeltaProduct n_h=1" before "n_h=2"); unknown labels go last."""
    for rank, spec in enumerate(MIXERS.values()):
        if label == spec.label:
            return rank, 0, label
        choices = spec.variant.choices if spec.variant is not None else None
        if choices:
            for variant_rank, value in enumerate(choices):
                if label == spec.display_label({spec.variant.argument: value}):
                    return rank, variant_rank, label
        elif spec.variant is not None and label.startswith(spec.label + " "):
            return rank, 0, label
    return len(MIXERS), 0, label


def mixers_with_switch() -> tuple[str, ...]:
    """Names of the mixers with the eigenvalue switch (the recurrent ones), in registration order."""
    return tuple(name for name, spec in MIXERS.items() if spec.eigenvalue_switch)
