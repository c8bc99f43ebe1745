"""Checkpoints: ``save_pretrained`` / ``from_pretrained`` round trips and their error reporting."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
import torch

from lrnn.models import LanguageModel
from lrnn.models.io import CONFIG_NAME, WEIGHTS_NAME
from model_testkit import F32, VOCAB, build_model, random_ids, single_threaded, tiny_config

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

ROUND_TRIPS = {
    "tied": dict(tie_embeddings=True),
    "untied": dict(tie_embeddings=False),
    "tied-padded_vocab": dict(tie_embeddings=True, vocab_size=37, pad_vocab_size_multiple=8),
    "untied-padded_vocab": dict(tie_embeddings=False, vocab_size=37, pad_vocab_size_multiple=8),
    "classifier": dict(num_labels=3),
    "hybrid-mamba2_dt_limit": dict(mixer=["mamba2", "attention", "deltaproduct", "lstm"], n_layers=4,
                                   mixer_kwargs={"mamba2": {"d_state": 8, "headdim": 8, "dt_limit": (0.0, float("inf")),
                                                            "A_init_range": (1.0, 4.0)},
                                                 "deltaproduct": {"num_heads": 2, "num_householder": 3}}),
}


def assert_only_checkpoint_files(directory) -> None:
    """The directory holds exactly config.json and model.safetensors: no temporary files left behind."""
    assert sorted(os.listdir(directory)) == sorted([CONFIG_NAME, WEIGHTS_NAME])


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_round_trip_gives_identical_outputs(tmp_path, case):
    """A saved and reloaded model has the same config, tensors and (bit for bit) outputs; tied heads stay
    tied, padded vocabularies still give vocab_size logit columns."""
    config = tiny_config(**{"mixer": "deltanet", **ROUND_TRIPS[case]})
    model = build_model(config, F32, embedding_std=0.02)
    directory = tmp_path / "checkpoint"
    model.save_pretrained(directory)
    assert_only_checkpoint_files(directory)
    loaded = LanguageModel.from_pretrained(directory).eval()
    assert loaded.config.to_dict() == json.loads(json.dumps(config.to_dict()))  # tuples come back as lists
    ids = random_ids(2, 11, vocab=config.vocab_size)
    with torch.no_grad():
        before, after = model(ids), loaded(ids)
    assert torch.equal(after, before)
    width = config.num_labels or config.vocab_size
    assert after.shape == (2, 11, width)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    if config.tie_embeddings and config.num_labels is None:
        assert loaded.head.weight is loaded.embedding.weight, "the reloaded head is no longer tied"
        assert "head.weight" not in safetensors.torch.load_file(str(directory / WEIGHTS_NAME))


def test_saving_twice_overwrites_and_leaves_no_temporary_files(tmp_path):
    """Saving a second model into the same directory replaces both files and leaves nothing else."""
    first, second = build_model(tiny_config("mamba2"), F32, seed=1), build_model(tiny_config("mamba2"), F32, seed=2)
    first.save_pretrained(tmp_path)
    second.save_pretrained(tmp_path)
    assert_only_checkpoint_files(tmp_path)
    ids = random_ids(1, 6)
    with torch.no_grad():
        assert torch.equal(LanguageModel.from_pretrained(tmp_path)(ids), second(ids))


def test_a_failed_save_keeps_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    """If writing the weights fails half way, the previous weights file is untouched and the partial
    temporary file is removed (the write goes to a temporary file, then is renamed)."""
    old = build_model(tiny_config("mamba2"), F32, seed=1)
    old.save_pretrained(tmp_path)
    before = (tmp_path / WEIGHTS_NAME).read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        build_model(tiny_config("mamba2"), F32, seed=2).save_pretrained(tmp_path)
    assert (tmp_path / WEIGHTS_NAME).read_bytes() == before
    assert_only_checkpoint_files(tmp_path)


@pytest.fixture()
def saved(tmp_path):
    """A saved 2-layer deltanet checkpoint directory."""
    build_model(tiny_config("deltanet"), F32).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_missing_directory_raises_file_not_found(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        LanguageModel.from_pretrained(missing)


@pytest.mark.parametrize("removed", [CONFIG_NAME, WEIGHTS_NAME])
def test_missing_file_raises_file_not_found_naming_it(saved, removed):
    """A checkpoint directory without its config or weights file: FileNotFoundError with the file's path."""
    (saved / removed).unlink()
    with pytest.raises(FileNotFoundError) as info:
        LanguageModel.from_pretrained(saved)
    assert str(saved / removed) in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weights_raise_value_error_naming_the_file(saved, damage):
    """A truncated, garbage or empty safetensors file raises a ValueError naming the file."""
    path = saved / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(64) * 8, "empty": b""}[damage])
    with pytest.raises(ValueError) as info:
        LanguageModel.from_pretrained(saved)
    assert str(path) in str(info.value)


def test_weights_of_another_shape_raise_value_error_naming_the_key(saved, tmp_path):
    """Weights from a model with another vocabulary: ValueError naming the mis-shaped tensor."""
    other = tmp_path / "other"
    build_model(tiny_config("deltanet", vocab_size=VOCAB + 8), F32).save_pretrained(other)
    (saved / WEIGHTS_NAME).write_bytes((other / WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match="embedding.weight"):
        LanguageModel.from_pretrained(saved)


def test_weights_with_missing_keys_raise_value_error_naming_a_key(saved, tmp_path):
    """Weights from a 1-layer model loaded under a 2-layer config: ValueError naming a missing key."""
    other = tmp_path / "other"
    build_model(tiny_config("deltanet", n_layers=1), F32).save_pretrained(other)
    (saved / WEIGHTS_NAME).write_bytes((other / WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match=r"layers\.1\."):
        LanguageModel.from_pretrained(saved)


def test_weights_with_unexpected_keys_raise_value_error_naming_a_key(saved):
    """An extra tensor in the weights file: ValueError naming it."""
    path = saved / WEIGHTS_NAME
    tensors = safetensors.torch.load_file(str(path))
    tensors["layers.0.mixer.stray"] = torch.zeros(3)
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(ValueError, match="layers.0.mixer.stray"):
        LanguageModel.from_pretrained(saved)


def test_unknown_config_key_raises_value_error_naming_it(saved):
    path = saved / CONFIG_NAME
    data = json.loads(path.read_text())
    data["hidden_act"] = "gelu"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hidden_act"):
        LanguageModel.from_pretrained(saved)


def test_invalid_config_json_raises_value_error_naming_the_file(saved):
    path = saved / CONFIG_NAME
    path.write_text("{not json")
    with pytest.raises(ValueError) as info:
        LanguageModel.from_pretrained(saved)
    assert str(path) in str(info.value)


# ---- dtypes and special token ids ---------------------------------------------------------------------
def test_float64_checkpoint_loads_as_float64_bit_for_bit(tmp_path):
    """from_pretrained keeps the saved dtype (it used to load every tensor as float32: drift ~1e-7)."""
    model = build_model(tiny_config("mamba2"), torch.float64, embedding_std=0.02)
    model.save_pretrained(tmp_path)
    loaded = LanguageModel.from_pretrained(tmp_path).eval()
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == torch.float64, name
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = random_ids(2, 11)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_from_pretrained_converts_to_the_dtype_asked_for(tmp_path, dtype):
    model = build_model(tiny_config("deltanet"), torch.float64)
    model.save_pretrained(tmp_path)
    loaded = LanguageModel.from_pretrained(tmp_path, dtype=dtype)
    assert {t.dtype for t in loaded.state_dict().values()} == {dtype}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.to(dtype)), name
    assert loaded.head.weight is loaded.embedding.weight  # still tied after the cast


@pytest.mark.parametrize("dtype", ["float32", torch.int64, 32])
def test_from_pretrained_refuses_a_dtype_that_is_not_a_float_dtype(saved, dtype):
    with pytest.raises(TypeError, match=r"dtype must be a floating-point torch\.dtype.*got"):
        LanguageModel.from_pretrained(saved, dtype=dtype)


def test_mixed_dtypes_are_kept_per_tensor(tmp_path):
    """A checkpoint holding float32 and bfloat16 tensors comes back with each tensor's own dtype."""
    model = build_model(tiny_config("mamba2", tie_embeddings=False), F32)
    model.head.to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = LanguageModel.from_pretrained(tmp_path)
    assert loaded.head.weight.dtype == torch.bfloat16 and loaded.embedding.weight.dtype == F32
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_special_token_ids_survive_save_and_load(tmp_path):
    """The ids live in generation_config.json beside the checkpoint; none recorded: no file, and a file left
    by an earlier save is removed rather than attached to another model."""
    from lrnn.models import SpecialTokens
    from lrnn.models.io import GENERATION_CONFIG_NAME

    model = build_model(tiny_config("deltanet"), F32)
    model.special_tokens = SpecialTokens(bos_token_id=0, eos_token_id=(0, 3), pad_token_id=0)
    model.save_pretrained(tmp_path)
    assert LanguageModel.from_pretrained(tmp_path).special_tokens == model.special_tokens
    build_model(tiny_config("deltanet"), F32).save_pretrained(tmp_path)
    assert not (tmp_path / GENERATION_CONFIG_NAME).exists()
    assert LanguageModel.from_pretrained(tmp_path).special_tokens == SpecialTokens()


@pytest.mark.parametrize("ids,key", [({"eos_token_id": -1}, "eos_token_id"), ({"bos_token_id": True}, "bos_token_id"),
                                     ({"pad_token_id": [1, 2]}, "pad_token_id"), ({"eos_token_id": []}, "eos_token_id")])
def test_bad_special_token_ids_name_the_file_and_key(saved, ids, key):
    from lrnn.models.io import GENERATION_CONFIG_NAME

    (saved / GENERATION_CONFIG_NAME).write_text(json.dumps(ids))
    with pytest.raises(ValueError, match=rf"{GENERATION_CONFIG_NAME}.*{key}"):
        LanguageModel.from_pretrained(saved)
