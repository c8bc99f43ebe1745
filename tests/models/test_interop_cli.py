"""Tokenizer, streaming decode and the ``lrnn convert`` / ``lrnn generate`` commands (local files only)."""

from __future__ import annotations

import json

import pytest
import torch

from lrnn.cli import main
from lrnn.models import LanguageModel, ModelConfig, SamplingConfig
from lrnn.models.interop import detect_format, load, save_model
from lrnn.models.tokenizer import Tokenizer, generate_text
from model_testkit import single_threaded

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)
tokenizers = pytest.importorskip("tokenizers")

TEXT = "héllo wörld, parity of 日本語 bits: 0 1 1 0. "


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A byte-level BPE tokenizer trained here on a few sentences (multi-byte characters included)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 20, trainer)
    directory = tmp_path_factory.mktemp("tok")
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    return directory


@pytest.fixture(scope="module")
def model_dir(tok_dir, tmp_path_factory):
    """A tiny Mamba-2 in mamba_ssm format next to the tokenizer."""
    vocab = Tokenizer(tok_dir).vocab_size
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, pad_vocab_size_multiple=8,
                                      mixer_kwargs={"mamba2": {"d_state": 8, "headdim": 8}}))
    directory = tmp_path_factory.mktemp("model")
    save_model(model, directory, "mamba_ssm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((tok_dir / name).read_bytes())
    return directory


def test_tokenizer_round_trip_and_eos(tok_dir):
    tok = Tokenizer(tok_dir)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.eos_token_id == tok._tok.token_to_id("<eos>")


def test_stream_decoder_pieces_concatenate_to_the_full_decode(tok_dir):
    """Token by token, multi-byte characters split over byte tokens come out whole, in order."""
    tok = Tokenizer(tok_dir)
    ids = tok.encode(TEXT + "ö日")
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.finish() == TEXT + "ö日"
    assert all("\ufffd" not in p for p in pieces)


def test_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer(tmp_path)


def test_generate_text_streams_what_it_generates(model_dir):
    tok = Tokenizer(model_dir)
    model = load(model_dir).model
    pieces: list[str] = []
    stats = generate_text(model, tok, TEXT, SamplingConfig(max_new_tokens=12), write=pieces.append)
    assert stats.prompt_tokens == len(tok.encode(TEXT)) and 1 <= stats.new_tokens <= 12
    # Greedy: the streamed text is the decode of lrnn's own greedy continuation (up to EOS).
    from lrnn.models import generate

    out = generate(model, torch.tensor([tok.encode(TEXT)]), sampling=SamplingConfig(max_new_tokens=12))
    new = out[0, stats.prompt_tokens:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    assert "".join(pieces) == tok.decode(new)


def test_cli_generate_streams_and_reports_speed(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompt", "parity", "--max-new-tokens", "8",
                 "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("parity")
    assert "tokens/s" in captured.err and "prefill" in captured.err
    main(["generate", "--model", str(model_dir), "--prompt", "parity", "--max-new-tokens", "8", "--seed", "3",
          "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9"])
    assert capsys.readouterr().out == captured.out  # same seed, same text


def test_cli_generate_errors_are_one_line(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["generate", "--model", str(tmp_path), "--prompt", "x"])
    assert err.value.code == 2 and "tokenizer.json" in capsys.readouterr().err


def test_cli_convert_round_trip(model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert "(mamba_ssm) ->" in capsys.readouterr().out and detect_format(tmp_path / "hf") == "hf"
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "lrnn"), "--to", "lrnn", "--from", "hf"]) == 0
    ids = torch.randint(0, 200, (1, 9))
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "lrnn").model(ids)[..., :200], load(model_dir).model(ids)[..., :200])
    config = json.loads((model_dir / "config.json").read_text())
    config["ssm_cfg"]["d_ssm"] = 4
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "bad"), str(tmp_path / "out"), "--to", "hf"])
    assert "d_ssm" in capsys.readouterr().err
