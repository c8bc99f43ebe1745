"""Tokenizer, streaming decode and the ``lrnn convert`` / ``lrnn generate`` commands (local files only)."""

from __future__ import annotations

import json

import pytest
import torch

from lrnn.cli import main
from lrnn.models import LanguageModel, ModelConfig, SamplingConfig, generate, generate_text
from lrnn.models.interop import detect_format, load, save_model
from lrnn.models.tokenizer import Tokenizer
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


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``lrnn ARGV``, check it exits 2 with one line on stderr, return that line."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert err.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"lrnn {argv[0]}: error: ")
    return lines[0]


def test_cli_generate_names_a_missing_model_directory_before_the_tokenizer(model_dir, tmp_path, capsys):
    """``--model missing`` used to complain about tokenizer.json."""
    line = one_line_error(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"], capsys)
    assert "model directory not found" in line and "missing" in line and "tokenizer" not in line
    line = one_line_error(["generate", "--model", str(model_dir), "--tokenizer", str(tmp_path), "--prompt", "x"],
                          capsys)
    assert "tokenizer.json" in line
    assert "temperature" in one_line_error(["generate", "--model", str(model_dir), "--prompt", "x",
                                            "--temperature", "0"], capsys)


def test_cli_generate_zero_new_tokens_prints_the_prompt_and_no_rate(model_dir, capsys):
    """``--max-new-tokens 0`` used to print "nan tokens/s": now the prompt, and a status line without a rate."""
    assert main(["generate", "--model", str(model_dir), "--prompt", "parity", "--max-new-tokens", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "parity\n"
    assert "[0 new tokens after a" in captured.err and "nan" not in captured.err and "tokens/s" not in captured.err


def test_cli_generate_computes_in_the_stored_dtype_or_the_one_asked_for(model_dir, tmp_path, capsys, monkeypatch):
    """A float64 checkpoint generates in float64 by default (auto); --dtype float32 converts."""
    import lrnn.models.text

    seen = []
    real = lrnn.models.text.generate

    def spy(model, *args, **kwargs):
        seen.append(model.embedding.weight.dtype)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(lrnn.models.text, "generate", spy)
    directory = tmp_path / "model64"
    save_model(load(model_dir).model.double(), directory, "lrnn")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((model_dir / name).read_bytes())
    for flags, dtype in (([], torch.float64), (["--dtype", "float32"], torch.float32)):
        assert main(["generate", "--model", str(directory), "--prompt", "parity", "--max-new-tokens", "2", *flags]) == 0
        assert seen.pop() == dtype
    capsys.readouterr()


def test_generation_stats_rate_needs_two_tokens():
    from lrnn.models import GenerationStats

    assert GenerationStats(3, 1, 0.5, 0.0).tokens_per_s is None
    assert GenerationStats(3, 0, 0.5, 0.0).summary() == "0 new tokens after a 3-token prompt; prefill 0.50 s"
    assert GenerationStats(3, 5, 0.5, 2.0).summary().endswith("decode 2.0 tokens/s")


def test_generate_text_stops_at_the_eos_the_checkpoint_recorded(tok_dir, model_dir, tmp_path):
    """Without an EOS in the tokenizer files, the model's recorded eos_token_id ends generation."""
    from lrnn.models import SpecialTokens

    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    tok = Tokenizer(tmp_path)
    assert tok.eos_token_id is None
    model = load(model_dir).model
    greedy = generate(model, torch.tensor([tok.encode(TEXT)]), sampling=SamplingConfig(max_new_tokens=12))
    first_new = int(greedy[0, len(tok.encode(TEXT))])
    model.special_tokens = SpecialTokens(eos_token_id=first_new)
    stats = generate_text(model, tok, TEXT, SamplingConfig(max_new_tokens=12), write=lambda piece: None)
    assert stats.new_tokens == 1


def _convert_argv(src, dst, *extra) -> list[str]:
    return ["convert", str(src), str(dst), "--to", "lrnn", *extra]


def test_cli_convert_refuses_a_non_empty_destination_unless_forced(model_dir, tmp_path, capsys):
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error(_convert_argv(model_dir, destination), capsys)
    assert sorted(p.name for p in destination.iterdir()) == ["notes.txt"]  # untouched
    assert main(_convert_argv(model_dir, destination, "--force")) == 0
    assert detect_format(destination) == "lrnn" and not (destination / "notes.txt").exists()  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left beside it


def test_cli_convert_into_an_existing_file_is_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(_convert_argv(model_dir, tmp_path / "file"), capsys)
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("existing", [False, True])
def test_failed_convert_leaves_the_destination_as_it_was(model_dir, tmp_path, monkeypatch, existing):
    """A write that fails half way (after the weights, before the config) leaves no partial directory and
    keeps a --force'd destination's old contents."""
    destination = tmp_path / "out"
    if existing:
        destination.mkdir()
        (destination / "old.txt").write_text("old")
    written_before_failing = []

    def broken_config_save(self, path):
        written_before_failing.extend(p.name for p in path.parent.iterdir())
        raise OSError("disk full")

    monkeypatch.setattr(ModelConfig, "save", broken_config_save)
    with pytest.raises(OSError, match="disk full"):
        main(_convert_argv(model_dir, destination, "--force"))
    assert "model.safetensors" in written_before_failing  # it failed half way
    if existing:
        assert sorted(p.name for p in destination.iterdir()) == ["old.txt"]
    else:
        assert not destination.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])


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


def test_cli_generate_points_a_run_directory_to_its_model(model_dir, tmp_path, capsys):
    """A run directory (config.json of the run, the model in model/) used to fail with 'unknown config keys'."""
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if (model_dir / name).exists():
            (run / "model" / name).write_bytes((model_dir / name).read_bytes())
    (run / "config.json").write_text('{"task": "parity", "steps": 10}')
    line = one_line_error(["generate", "--model", str(run), "--prompt", "x"], capsys)
    assert f"its model is {run / 'model'}" in line
