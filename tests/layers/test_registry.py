"""The mixer registry: one spec per mixer, and everything above the layers reading it.

A toy mixer registered here (and removed afterwards) shows that a new mixer needs only its own module:
run configs, model configs, sweeps and labels pick it up from its spec.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from lrnn.layers import GENERIC_FIELDS, MIXERS, RECURRENT_MIXERS, MixerSpec, Variant, build_mixer, mixer_spec, register
from lrnn.models import LanguageModel, ModelConfig
from lrnn.training import RunConfig
from lrnn.training.sweep import SweepSpec, run_name


def test_every_mixer_is_registered_with_a_consistent_spec():
    assert set(MIXERS) == {"mamba", "mamba2", "deltanet", "gated_deltanet", "deltaproduct", "attention", "lstm", "s4d"}
    assert set(RECURRENT_MIXERS) == {n for n, s in MIXERS.items() if s.eigenvalue_switch}
    for name, spec in MIXERS.items():
        assert spec.name == name and spec.label and spec.summary
        takes_switch = "negative_eigenvalues" in inspect.signature(spec.build).parameters or (
            isinstance(spec.build, type) and any("negative_eigenvalues" in inspect.signature(c).parameters
                                                 for c in spec.build.__mro__[:-2]))
        assert takes_switch == spec.eigenvalue_switch, name
        # The declared chunk size is the constructor's default; mixers without a chunked scan have none.
        # None: the layer picks it from its size (the DeltaNet family: ``lrnn.ops.delta_chunk_size(head_dim)``).
        if "chunk_size" in spec.fields:
            built = spec.build(16, **{k: v for k, v in spec.small.items() if k != "chunk_size"}).chunk_size
            assert spec.chunk_size == built or (spec.chunk_size is None and isinstance(built, int) and built > 0)
        else:
            assert spec.chunk_size is None
        layer = build_mixer(name, 16, **spec.small)  # the small arguments build, and the layer runs
        assert layer(torch.randn(2, 5, 16)).shape == (2, 5, 16)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_rejects_unknown_keyword_arguments(name):
    """Attention and the LSTM used to swallow misspelled arguments (``**_``)."""
    with pytest.raises(TypeError, match="num_hedas"):
        build_mixer(name, 16, **MIXERS[name].small, num_hedas=4)


def test_unknown_mixer_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown mixer 'mamba3'.*mamba2"):
        mixer_spec("mamba3")
    with pytest.raises(ValueError, match="mixer must be one of"):
        RunConfig(mixer="mamba3")


def test_generic_fields_map_onto_each_constructor():
    assert RunConfig(mixer="deltanet", heads=8, n_h=2, chunk_size=32).mixer_arguments() == \
        {"num_heads": 8, "num_householder": 2, "chunk_size": 32}
    assert RunConfig(mixer="attention", heads=8).mixer_arguments() == {"num_heads": 8}
    assert RunConfig(mixer="mamba", d_state=8).mixer_arguments() == {"d_state": 8}
    assert RunConfig(mixer="s4d", d_state=8).mixer_arguments() == {"d_state": 8}
    # None everywhere: each mixer's own defaults.
    for name in MIXERS:
        assert RunConfig(mixer=name).mixer_arguments() == {}


def test_mamba2_heads_follow_expand_from_mixer_kwargs():
    """``heads=4`` with ``expand=4`` used to build 8 heads (headdim was derived assuming expand = 2)."""
    config = RunConfig(mixer="mamba2", d_model=64, heads=4, mixer_kwargs={"expand": 4})
    model = LanguageModel(config.model_config(vocab_size=5, num_classes=2))
    assert model.layers[0].mixer.nheads == 4
    assert LanguageModel(RunConfig(mixer="mamba2", d_model=64, heads=4).model_config(5, 2)).layers[0].mixer.nheads == 4


def test_a_generic_field_contradicting_mixer_kwargs_names_both():
    with pytest.raises(ValueError, match=r"heads=4 sets mamba2's headdim=32, but mixer_kwargs sets headdim=16"):
        RunConfig(mixer="mamba2", d_model=64, heads=4, mixer_kwargs={"headdim": 16})
    with pytest.raises(ValueError, match=r"heads=4 sets deltanet's num_heads=4, but mixer_kwargs sets num_heads=2"):
        RunConfig(mixer="deltanet", heads=4, mixer_kwargs={"num_heads": 2})
    # Agreeing values are fine.
    assert RunConfig(mixer="deltanet", heads=4, mixer_kwargs={"num_heads": 4}).mixer_arguments() == {"num_heads": 4}


@pytest.mark.parametrize("mixer, field", [("lstm", "heads"), ("mamba", "heads"), ("mamba", "n_h"),
                                          ("attention", "chunk_size"), ("deltanet", "d_state"), ("s4d", "heads")])
def test_a_generic_field_the_mixer_lacks_is_an_error_not_ignored(mixer, field):
    with pytest.raises(ValueError, match=f"mixer '{mixer}' has no {field}"):
        RunConfig(mixer=mixer, **{field: 2})


@pytest.mark.parametrize("mixer", sorted(set(MIXERS) - set(RECURRENT_MIXERS)))
def test_the_eigenvalue_flag_on_a_mixer_without_the_switch_is_an_error(mixer):
    with pytest.raises(ValueError, match=f"mixer '{mixer}' has no eigenvalue switch"):
        RunConfig(mixer=mixer, negative_eigenvalues=True)
    with pytest.raises(ValueError, match=f"mixer '{mixer}' has no eigenvalue switch"):
        ModelConfig(vocab_size=5, mixer=mixer, negative_eigenvalues=True)


def test_one_default_and_one_spelling_of_the_eigenvalue_range():
    """The switch is a bool, False by default in every config and layer; labels appear only at display."""
    assert RunConfig().negative_eigenvalues is False and ModelConfig(vocab_size=5).negative_eigenvalues is False
    for name in RECURRENT_MIXERS:
        assert MIXERS[name].default("negative_eigenvalues") is False
    with pytest.raises(ValueError, match="ModelConfig.negative_eigenvalues"):
        ModelConfig(vocab_size=5, mixer="deltanet", mixer_kwargs={"deltanet": {"negative_eigenvalues": True}})
    with pytest.raises(TypeError, match="negative_eigenvalues must be a bool"):
        RunConfig(negative_eigenvalues="[-1, 1]")
    # A hybrid applies the switch to the layers that have it.
    hybrid = ModelConfig(vocab_size=5, mixer="mamba2", n_layers=2, attention_every=2, negative_eigenvalues=True)
    assert hybrid.mixer_arguments("mamba2")["negative_eigenvalues"] is True
    assert "negative_eigenvalues" not in hybrid.mixer_arguments("attention")


def test_labels_tags_and_variants_come_from_the_registry():
    cases = {("deltaproduct", None): ("DeltaProduct n_h=2", "deltaproduct2"),
             ("deltaproduct", 3): ("DeltaProduct n_h=3", "deltaproduct3"),
             ("deltanet", None): ("DeltaNet", "deltanet"), ("deltanet", 2): ("DeltaNet n_h=2", "deltanet2"),
             ("gated_deltanet", 2): ("Gated DeltaNet n_h=2", "gated_deltanet2"),
             ("attention", None): ("Transformer", "attention"), ("mamba2", None): ("Mamba-2", "mamba2")}
    for (mixer, n_h), (label, tag) in cases.items():
        config = RunConfig(mixer=mixer, n_h=n_h)
        assert config.model_label == label
        assert run_name(config) == f"parity-{tag}-{'pos' if MIXERS[mixer].eigenvalue_switch else 'base'}-lr0.001-s0"
    s4d = RunConfig(mixer="s4d", mixer_kwargs={"init": "ptd"})
    assert s4d.model_label == "S4D-PTD" and run_name(s4d).startswith("parity-s4d-ptd-base")
    from lrnn.ops import S4D_INITS
    assert set(MIXERS["s4d"].variant.choices) == set(S4D_INITS)
    with pytest.raises(ValueError, match="mixer 'mamba' has no ':' variant"):
        SweepSpec(models=["mamba:2"])
    with pytest.raises(ValueError, match="the n_h of model 'deltaproduct:x' must be a positive integer"):
        SweepSpec(models=["deltaproduct:x"])


def test_sweeps_apply_shared_size_fields_only_where_the_mixer_takes_them():
    spec = SweepSpec(models=["lstm", "mamba2", "deltaproduct:3", "s4d:lin"], ranges=["[0,1]", "[-1,1]"],
                     base={"heads": 4, "d_state": 16, "d_model": 32})
    runs = dict(spec.runs())
    assert sorted(runs) == ["parity-deltaproduct3-neg-lr0.001-s0", "parity-deltaproduct3-pos-lr0.001-s0",
                            "parity-lstm-base-lr0.001-s0", "parity-mamba2-neg-lr0.001-s0",
                            "parity-mamba2-pos-lr0.001-s0", "parity-s4d-lin-base-lr0.001-s0"]
    assert runs["parity-lstm-base-lr0.001-s0"].mixer_arguments() == {}
    assert runs["parity-mamba2-neg-lr0.001-s0"].mixer_arguments() == {"headdim": 16, "d_state": 16}
    assert runs["parity-deltaproduct3-neg-lr0.001-s0"].mixer_arguments() == {"num_heads": 4, "num_householder": 3}
    assert runs["parity-s4d-lin-base-lr0.001-s0"].mixer_arguments() == {"d_state": 16, "init": "lin"}
    # model_overrides are meant for one model: there a field the mixer lacks is an error.
    with pytest.raises(ValueError, match="mixer 'lstm' has no heads"):
        SweepSpec(models=["lstm"], model_overrides={"lstm": {"heads": 2}}).runs()


class _Toy(nn.Module):
    """A toy recurrent mixer: h_t = a h_{t-1} + x_t with a in (0, 1) or (-1, 1)."""

    def __init__(self, d_model: int, width: int = 3, chunk_size: int = 7, negative_eigenvalues: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.width, self.chunk_size, self.negative_eigenvalues = width, chunk_size, negative_eigenvalues

    def forward(self, hidden, state=None, mask=None, mode=None):
        return self.proj(hidden)


@pytest.fixture
def toy_mixer():
    spec = register(MixerSpec(name="toy", label="Toy", summary="a test mixer", build=_Toy, eigenvalue_switch=True,
                              fields={"heads": "width", "chunk_size": "chunk_size"},
                              variant=Variant("width", generic_field="heads", label="{label} w={value}")))
    yield spec
    del MIXERS["toy"]


def test_a_new_mixer_needs_only_its_registry_entry(toy_mixer):
    assert toy_mixer.chunk_size == 7 and toy_mixer.display_label({}) == "Toy w=3"
    config = RunConfig(mixer="toy", heads=5, negative_eigenvalues=True, d_model=8, n_layers=1)
    assert config.model_label == "Toy w=5" and config.eigenvalue_range == "[-1, 1]"
    model = LanguageModel(config.model_config(vocab_size=5, num_classes=2))
    layer = model.layers[0].mixer
    assert isinstance(layer, _Toy) and layer.width == 5 and layer.negative_eigenvalues
    runs = dict(SweepSpec(models=["toy:4"], ranges=["[-1,1]"]).runs())
    assert list(runs) == ["parity-toy4-neg-lr0.001-s0"] and runs["parity-toy4-neg-lr0.001-s0"].heads == 4
    with pytest.raises(ValueError, match="a mixer named 'toy' is registered already"):
        register(MixerSpec(name="toy", label="Other", summary="", build=_Toy))


def test_a_spec_names_only_generic_fields():
    with pytest.raises(ValueError, match="not generic fields"):
        MixerSpec(name="bad", label="Bad", summary="", build=_Toy, fields={"width": "width"})
    assert set(GENERIC_FIELDS) == {"heads", "n_h", "d_state", "chunk_size"}


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_maps_an_empty_sequence_to_an_empty_one_and_keeps_its_state(name):
    """T = 0 used to fail in the LSTM (stacking no steps) and in the gated norms of Mamba-2 and Gated
    DeltaNet (a -1 in a reshape of an empty tensor)."""
    spec = MIXERS[name]
    torch.manual_seed(0)
    layer = spec.build(16, **spec.small).double()
    assert layer(torch.randn(2, 0, 16, dtype=torch.float64)).shape == (2, 0, 16)
    state: dict = {}
    layer(torch.randn(2, 5, 16, dtype=torch.float64), state)
    before = {key: value.clone() for key, value in state.items()}
    assert layer(torch.randn(2, 0, 16, dtype=torch.float64), state).shape == (2, 0, 16)
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
