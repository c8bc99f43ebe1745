"""Invalid model configs and invalid model inputs raise clear errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import Cache
from lrnn.models import LanguageModel, ModelConfig
from model_testkit import VOCAB, build_model, random_ids, single_threaded, tiny_config

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "n_layers", "pad_vocab_size_multiple"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes_raise_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{"vocab_size": VOCAB, field: value})


@pytest.mark.parametrize("field,value", [("d_model", 16.0), ("n_layers", "2"), ("vocab_size", True),
                                         ("d_intermediate", 1.5), ("num_labels", 2.0), ("attention_every", None)])
def test_non_int_sizes_raise_type_error(field, value):
    """Sizes must be real ints (bools and floats with integral values are rejected too)."""
    with pytest.raises(TypeError, match=field):
        ModelConfig(**{"vocab_size": VOCAB, field: value})


@pytest.mark.parametrize("field,value", [("d_intermediate", -1), ("attention_every", -1), ("num_labels", 0)])
def test_negative_optional_sizes_raise_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{"vocab_size": VOCAB, field: value})


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_negative_eigenvalues_must_be_a_bool(value):
    with pytest.raises(TypeError, match="negative_eigenvalues"):
        ModelConfig(VOCAB, negative_eigenvalues=value)


@pytest.mark.parametrize("mixer", ["transformer", ["mamba2", "s4"]], ids=["name", "in-list"])
def test_unknown_mixer_name_raises_value_error_listing_it(mixer):
    with pytest.raises(ValueError, match="s4" if isinstance(mixer, list) else "transformer") as info:
        ModelConfig(VOCAB, n_layers=2, mixer=mixer)
    assert "mamba2" in str(info.value), "the message should list the known mixers"


def test_unknown_mixer_in_mixer_kwargs_raises_value_error():
    with pytest.raises(ValueError, match="retnet"):
        ModelConfig(VOCAB, mixer_kwargs={"retnet": {}})


def test_mixer_kwargs_must_be_a_dict():
    """A non-dict ``mixer_kwargs`` is a TypeError about mixer_kwargs (not an "unknown mixer" message)."""
    with pytest.raises(TypeError, match="mixer_kwargs"):
        ModelConfig(VOCAB, mixer_kwargs=[("mamba2", {})])


def test_mixer_list_length_must_match_n_layers():
    with pytest.raises(ValueError, match="n_layers"):
        ModelConfig(VOCAB, n_layers=3, mixer=["mamba2", "attention"])


@pytest.mark.parametrize("mixer,kwargs,named", [
    ("deltanet", {"num_heads": 5}, "num_heads"),
    ("attention", {"num_heads": 3}, "num_heads"),
    ("mamba2", {"headdim": 12}, "headdim"),
    ("mamba2", {"headdim": 8, "ngroups": 3}, "ngroups"),
])
def test_indivisible_mixer_sizes_fail_when_building_the_model(mixer, kwargs, named):
    """Layer-level size errors surface from ``LanguageModel(config)`` as a ValueError naming the argument."""
    with pytest.raises(ValueError, match=named):
        LanguageModel(ModelConfig(VOCAB, d_model=16, n_layers=1, mixer=mixer, mixer_kwargs={mixer: kwargs}))


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config(["deltanet", "attention"]))


@pytest.mark.parametrize("ids", [torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), torch.zeros(6, dtype=torch.long),
                                 [[1, 2, 3]]], ids=["float32", "float64", "1-d", "list"])
def test_non_integer_or_misshaped_input_ids_raise_type_error(model, ids):
    with pytest.raises(TypeError, match="input_ids"):
        model(ids)


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 100, -1])
def test_out_of_range_token_ids_raise_value_error(model, bad):
    ids = random_ids(2, 5)
    ids[1, 3] = bad
    with pytest.raises(ValueError, match=str(bad)):
        model(ids)


def test_token_ids_in_padded_vocab_rows_are_rejected():
    """Ids in the padding rows of the embedding (vocab_size <= id < padded size) are out of range too."""
    padded = build_model(tiny_config("mamba2", vocab_size=37, pad_vocab_size_multiple=8))
    with pytest.raises(ValueError, match="37"):
        padded(torch.tensor([[1, 38]]))


@pytest.mark.parametrize("cache", [Cache(1), Cache(3), {}], ids=["1-layer", "3-layer", "dict"])
def test_cache_with_the_wrong_number_of_layers_raises_value_error(model, cache):
    with pytest.raises(ValueError, match="cache"):
        model(random_ids(1, 4), cache=cache)


@pytest.mark.parametrize("shape", [(2, 6), (1, 5), (2, 5, 1)])
def test_attention_mask_of_another_shape_raises_value_error(model, shape):
    with pytest.raises(ValueError, match="attention_mask"):
        model(random_ids(2, 5), attention_mask=torch.ones(shape, dtype=torch.long))
