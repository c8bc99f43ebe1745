"""The token-dynamics experiment report (lrnn.analysis.experiments): rows from run directories, regimes measured
on the saved models, the classification table, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lrnn.analysis.experiments import classification_rows, lm_rows, write_report
from lrnn.models import LanguageModel, ModelConfig


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["def mean(values):\n    return sum(values) / len(values)\n"] * 10, trainer)
    directory = tmp_path_factory.mktemp("tok")
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def lm_run(root, name, token_dynamics, seed, val_bpb, tokenizer_files, mixer="mamba"):
    """A finished pretraining run directory with a saved tiny model of that parametrisation."""
    run = root / name
    kwargs = {"mamba": {"token_dynamics": token_dynamics, "d_state": 4}} if mixer == "mamba" else {}
    config = ModelConfig(vocab_size=300, d_model=16, n_layers=2, mixer=mixer, mixer_kwargs=kwargs, d_intermediate=0)
    torch.manual_seed(seed)
    LanguageModel(config).save_pretrained(run / "model")
    (run / "model" / "tokenizer.json").write_bytes(tokenizer_files.read_bytes())
    result = {"finished": True, "val_bpb": val_bpb,
              "config": {"mixer": mixer, "seed": seed, "mixer_kwargs": kwargs}}
    (run / "result.json").write_text(json.dumps(result))


def train_run(root, name, tau, seed, score, finished=True):
    (root / name).mkdir(parents=True)
    config = {"mixer": "mamba", "mixer_kwargs": {} if tau is None else {"reorder_tau": tau}}
    (root / name / "result.json").write_text(json.dumps({"finished": finished, "seed": seed, "score": score,
                                                          "config": config}))


def test_lm_rows_group_seeds_and_measure_each_models_regimes(tmp_path, tokenizer_files):
    lm_run(tmp_path, "neg-s1", "negative", 1, 2.5, tokenizer_files)
    lm_run(tmp_path, "pos-s0", "positive", 0, 2.0, tokenizer_files)
    lm_run(tmp_path, "pos-s1", "positive", 1, 2.2, tokenizer_files)
    lm_run(tmp_path, "default-s0", None, 0, 2.1, tokenizer_files)
    rows = lm_rows(tmp_path, max_steps=20)
    assert [r.label for r in rows] == ["default", "positive", "negative"]
    positive = rows[1]
    assert sorted(zip(positive.seeds, positive.values)) == [(0, 2.0), (1, 2.2)]
    assert positive.mean == pytest.approx(2.1) and positive.spread == pytest.approx(0.1414, abs=1e-4)
    # refinement 1 fixes the sign of sym(S_C^T S_B): every layer of every model is in its regime
    assert positive.regimes == [["divergent", "divergent"]] * 2
    assert rows[2].regimes == [["convergent", "convergent"]]
    assert all(lo > 0 and hi >= lo for lo, hi in positive.norm_ratios)


def test_classification_rows_and_the_report(tmp_path, tokenizer_files):
    cls = tmp_path / "cls"
    train_run(cls, "off-s0", None, 0, 0.5)
    train_run(cls, "off-s1", None, 1, 0.7)
    train_run(cls, "tau-s0", 1.0, 0, 0.4)
    train_run(cls, "tau-s1", 1.0, 1, 0.9, finished=False)  # an unfinished run is left out
    rows = classification_rows(cls)
    assert [(r.label, r.values) for r in rows] == [("no reordering", [0.5, 0.7]), ("reorder tau=1", [0.4])]
    lm = tmp_path / "lm"
    lm_run(lm, "pos-s0", "positive", 0, 2.0, tokenizer_files)
    out = tmp_path / "out"
    paths = write_report(lm, cls, out, "the command", max_steps=20)
    text = paths["report"].read_text()
    assert "the command" in text and "| positive | 1 | 2.0000 |" in text and "| Mamba, no reordering | 2 | 0.500, 0.700 |" in text
    summary = json.loads(paths["summary"].read_text())
    assert summary["classification"][1]["values"] == [0.4]
    with pytest.raises(ValueError, match="already holds"):
        write_report(None, cls, out, "again")
    write_report(None, cls, out, "again", overwrite=True)
    assert "again" in paths["report"].read_text()


def test_refusals(tmp_path, tokenizer_files):
    with pytest.raises(ValueError, match="give the language-model runs"):
        write_report(None, None, tmp_path / "out", "c")
    with pytest.raises(ValueError, match="runs directory not found"):
        lm_rows(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished run"):
        classification_rows(tmp_path / "empty")
    lm_run(tmp_path / "lm", "attn", None, 0, 2.0, tokenizer_files, mixer="attention")
    with pytest.raises(ValueError, match="not a Mamba run"):
        lm_rows(tmp_path / "lm", max_steps=20)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        write_report(None, tmp_path / "lm", tmp_path / "file", "c")
