"""lrnn bench speculative: the prompts (held-out documents), the report's structure, the exactness check (it
fails on an output that differs), and the errors for bad input.

Tiny random models on a tiny corpus: no speed is asserted, the machine's speed is not the code's to promise.
"""

from __future__ import annotations

import argparse
import json
import statistics

import pytest
import torch

import lrnn.cli
from lrnn.bench import speculative as bench_spec
from lrnn.data import TextTokenizer, is_validation_document, train_tokenizer
from lrnn.models import LanguageModel, ModelConfig, generate

VOCAB = 300
VAL_FRACTION = 0.25  # documents 3, 7, 11 of 12 are held out
DOCUMENTS = [f"def function_{i}(x, y):\n    total = x + y * {i}\n    for item in range({i}):\n"
             f"        total += item\n    return total  # document {i}\n" for i in range(12)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Twelve small Python files, numbered in sorted path order (= corpus order)."""
    directory = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(DOCUMENTS):
        (directory / f"doc{i:02d}.py").write_text(text)
    return directory


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(DOCUMENTS, VOCAB, directory)
    return directory


def save_model(directory, tokenizer_dir, mixer="gated_deltanet", seed=0, vocab=VOCAB):
    """A tiny random LM saved with ``tokenizer_dir``'s tokenizer: what ``lrnn pretrain`` leaves in <run>/model."""
    torch.manual_seed(seed)
    kwargs = {"mamba2": {"d_state": 8, "headdim": 8}} if mixer == "mamba2" else {}
    model = LanguageModel(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, mixer=mixer, mixer_kwargs=kwargs))
    model.save_pretrained(directory)
    TextTokenizer(tokenizer_dir).save(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("models")
    return save_model(root / "target", tokenizer_dir), save_model(root / "draft", tokenizer_dir, "mamba2", seed=1)


def cli(*argv):
    return lrnn.cli.main(["bench", "speculative", *map(str, argv)])


def small_run(models, corpus, *extra):
    target, draft = models
    return ("--target", target, "--draft", draft, "--data", corpus, "--val-fraction", VAL_FRACTION, "--prompts", 2,
            "--prompt-tokens", 10, "--new-tokens", 12, "--branching", "2,1", "--repeats", 2, *extra)


def test_prompts_are_the_starts_of_held_out_documents(corpus, tokenizer_dir):
    tokenizer = TextTokenizer(tokenizer_dir)
    files = sorted(corpus.iterdir())
    prompts = bench_spec.validation_prompts(files, tokenizer, VAL_FRACTION, 3, 10)
    assert [p.document for p in prompts] == [3, 7, 11]
    for p in prompts:
        assert is_validation_document(p.document, VAL_FRACTION) and p.source == str(files[p.document])
        assert p.ids == [tokenizer.eos_id, *tokenizer.encode_batch([DOCUMENTS[p.document]])[0][:9]]
    # Two of three: evenly spaced over the held-out documents.
    assert [p.document for p in bench_spec.validation_prompts(files, tokenizer, VAL_FRACTION, 2, 10)] == [3, 7]
    with pytest.raises(ValueError, match=r"--prompts 4: only 3 of the 3 validation documents \(of 12"):
        bench_spec.validation_prompts(files, tokenizer, VAL_FRACTION, 4, 10)
    with pytest.raises(ValueError, match="--prompts 1: only 0 of the 3 validation documents"):
        bench_spec.validation_prompts(files, tokenizer, VAL_FRACTION, 1, 10_000)


def test_first_difference():
    a = torch.tensor([[1, 2, 3, 4]])
    assert bench_spec.first_difference(a, a.clone()) is None
    assert bench_spec.first_difference(torch.tensor([[1, 2, 9, 4]]), a) == 2
    assert bench_spec.first_difference(a[:, :3], a) == 3 and bench_spec.first_difference(a, a[:, :3]) == 3


def test_cli_runs_every_method_checks_them_and_writes_the_report(models, corpus, tmp_path, capsys):
    out = tmp_path / "spec.json"
    assert cli(*small_run(models, corpus, "--json", out)) == 0
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["mismatches"] == []
    assert [p["document"] for p in report["prompts"]] == [3, 7] and report["prompts"][0]["tokens"] == 10
    assert report["methods"] == ["autoregressive", "chain k=4 / draft model", "chain k=4 / prompt lookup",
                                 "tree 2,1 / draft model", "tree 2,1 / prompt lookup"]
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == set(report["methods"]) and all(r["target"] == str(models[0]) for r in rows.values())
    for row in rows.values():
        assert row["calls"] == 2 * 2 and row["mismatches"] == 0 and len(row["round_seconds"]) == 2
        assert row["tokens_per_s"] == pytest.approx(statistics.median(2 * 12 / s for s in row["round_seconds"]))
        assert row["tokens_per_s_best"] == pytest.approx(2 * 12 / min(row["round_seconds"]))
    baseline = rows["autoregressive"]
    assert baseline["speedup"] == 1.0 and baseline["accepted_per_step"] is None
    for name in report["methods"][1:]:
        row = rows[name]
        assert row["steps"] >= 4 and 0 <= row["accepted_per_step"] <= (4 if "chain" in name else 2)
        assert row["speedup"] == pytest.approx(statistics.median(b / s for b, s in zip(baseline["round_seconds"],
                                                                                        row["round_seconds"])))
    text = capsys.readouterr().out
    assert "**1 intra-op thread(s)**; 1-minute load average " in text and text.count("1-minute load average") == 1
    assert "2 validation documents" in text and "doc03.py, doc07.py" in text and "compiled" not in text
    assert "| tree 2,1 | prompt lookup |" in text
    assert "Exactness: all 20 speculative outputs (timed and warm-up) equal the autoregressive output" in text


def _off_by_one(target, ids, new_tokens, stats):
    """A broken decoder: greedy output with its last token changed."""
    out = generate(target, ids, sampling=bench_spec._greedy(new_tokens))
    out[0, -1] = (out[0, -1] + 1) % target.config.vocab_size
    return out


def test_an_output_that_differs_from_autoregressive_decoding_fails_the_command(models, corpus, tmp_path, capsys,
                                                                                monkeypatch):
    build = bench_spec.build_methods
    monkeypatch.setattr(bench_spec, "build_methods", lambda *args: build(*args)
                        + [bench_spec.Method("broken", "off by one", True, _off_by_one)])
    out = tmp_path / "spec.json"
    assert cli(*small_run(models, corpus, "--json", out)) == 1
    captured = capsys.readouterr()
    assert "FAILED: 5 speculative output(s) differ" in captured.err
    assert "**FAILED: 5 output(s) differ from greedy autoregressive decoding**" in captured.out
    assert "| broken | off by one |" in captured.out and "**NO (5 of 4 + warm-up)**" in captured.out
    report = json.loads(out.read_text())
    assert {m["method"] for m in report["mismatches"]} == {"broken / off by one"}
    assert [(m["round"], m["prompt"]) for m in report["mismatches"]] == [(None, 0), (0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(m["new_token"] == 11 and m["got"] == (m["expected"] + 1) % VOCAB for m in report["mismatches"])
    assert all(r["mismatches"] == 0 for r in report["rows"] if r["method"] != "broken / off by one")


def test_bench_target_needs_the_autoregressive_reference_first(models):
    target = LanguageModel.from_pretrained(models[0])
    methods = bench_spec.build_methods(None, 2, [(2,)], 3)
    prompt = bench_spec.Prompt("x", 0, [1, 2, 3])
    with pytest.raises(ValueError, match="methods\\[0\\] must be the 'autoregressive' reference, got 'chain k=2'"):
        bench_spec.bench_target(target, methods[1:], [prompt], 4, 1)
    rows, mismatches = bench_spec.bench_target(target, methods, [prompt], 4, 1, log=lambda _: None)
    assert [r["method"] for r in rows] == ["autoregressive", "chain k=2 / prompt lookup", "tree 2 / prompt lookup"]
    assert mismatches == []


def test_without_a_draft_model_only_prompt_lookup_drafts(models, corpus, tmp_path):
    out = tmp_path / "spec.json"
    argv = [a for a in small_run(models, corpus, "--json", out)]
    del argv[2:4]  # --draft DIR
    assert cli(*argv, "--repeats", 1) == 0
    report = json.loads(out.read_text())
    assert report["draft"] is None
    assert report["methods"] == ["autoregressive", "chain k=4 / prompt lookup", "tree 2,1 / prompt lookup"]
    assert cli(*argv, "--repeats", 1, "--tree-nodes", 3) == 0  # prompt lookup's dynamic trees
    assert json.loads(out.read_text())["methods"][-1] == "tree 2,1, <= 3 nodes / prompt lookup"


@pytest.fixture
def other_models(tmp_path, tokenizer_dir, corpus):
    """A draft with its own tokenizer, one with another vocabulary, a classifier, and a model inside a
    pretraining run that recorded its corpus and split (the test corpus, val_fraction 0.25)."""
    other_tokenizer = tmp_path / "other_tokenizer"
    train_tokenizer([d.upper() for d in DOCUMENTS], VOCAB, other_tokenizer)
    run = tmp_path / "run"
    save_model(run / "model", tokenizer_dir)
    (run / "config.json").write_text(json.dumps({"data": [str(corpus)], "val_fraction": VAL_FRACTION}))
    classifier = save_model(tmp_path / "classifier", tokenizer_dir)
    config = json.loads((classifier / "config.json").read_text())
    LanguageModel(ModelConfig(**{**config, "num_labels": 3})).save_pretrained(classifier)
    return {"tokenizer": save_model(tmp_path / "other_tok", other_tokenizer),
            "vocab": save_model(tmp_path / "other_vocab", tokenizer_dir, vocab=VOCAB + 8),
            "run": run / "model", "classifier": classifier}


@pytest.mark.parametrize("change,message", [
    (lambda m, o: ["--draft", o["tokenizer"]], "differs from the first target's"),
    (lambda m, o: ["--draft", o["vocab"]], f"vocab_size {VOCAB + 8} differs from the first target's {VOCAB}"),
    (lambda m, o: ["--target", o["classifier"]], "a token classifier (num_labels=3), not a language model"),
    (lambda m, o: ["--target", o["run"], "--val-fraction", 0.5], f"with val_fraction {VAL_FRACTION}, not on"),
    (lambda m, o: ["--draft", m[0].parent / "nowhere"], "nowhere: no such model directory"),
    (lambda m, o: ["--prompts", 0], "--prompts must be >= 1, got 0"),
    (lambda m, o: ["--prompts", 4], "--prompts 4: only 3 of the 3 validation documents"),
    (lambda m, o: ["--prompt-tokens", 1], "--prompt-tokens must be >= 2, got 1"),
    (lambda m, o: ["--new-tokens", 0], "--new-tokens must be >= 1, got 0"),
    (lambda m, o: ["--threads", 0], "--threads must be >= 1, got 0"),
    (lambda m, o: ["--val-fraction", 0.75], "--val-fraction must lie in (0, 0.5], got 0.75"),
    (lambda m, o: ["--branching", "2,0"], "expected positive integers separated by commas"),
    (lambda m, o: ["--tree-nodes", 0], "--tree-nodes must be >= 1, got 0"),
    (lambda m, o: ["--draft-tokens", 4, 0], "--draft-tokens must be >= 1, got 0"),
])
def test_bad_input_is_a_usage_error(models, corpus, other_models, change, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(*small_run(models, corpus, *change(models, other_models)))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench_spec.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_a_pretraining_runs_own_split_is_accepted(corpus, other_models):
    """The model's run recorded the test corpus at val_fraction 0.25: a benchmark of that split passes."""
    settings = bench_spec.settings_from_args(parse("--target", other_models["run"], "--data", corpus,
                                                   "--val-fraction", VAL_FRACTION, "--prompts", 3,
                                                   "--prompt-tokens", 10))
    assert [p.document for p in settings.prompts] == [3, 7, 11] and settings.corpus == str(corpus)
    with pytest.raises(ValueError, match="trained .* with val_fraction 0.25, not on the default corpus"):
        bench_spec.settings_from_args(parse("--target", other_models["run"], "--val-fraction", VAL_FRACTION))


def test_both_cache_modes_are_timed_as_methods_and_checked(models, corpus, tmp_path):
    """``--chain-rollback replay select`` and ``--tree-commit select recompute``: one method per mode, a mode
    other than the default (auto, chains; select, trees) named in the row, every output checked; the select
    modes count no commit forwards."""
    out = tmp_path / "spec.json"
    argv = [a for a in small_run(models, corpus, "--json", out)]
    del argv[2:4]  # --draft DIR
    assert cli(*argv, "--repeats", 1, "--chain-rollback", "replay", "select", "--tree-commit", "select",
               "recompute") == 0
    report = json.loads(out.read_text())
    assert report["methods"] == ["autoregressive", "chain k=4, replay / prompt lookup",
                                 "chain k=4, select / prompt lookup",
                                 "tree 2,1 / prompt lookup", "tree 2,1, recompute / prompt lookup"]
    assert report["mismatches"] == []
    rows = {r["method"]: r for r in report["rows"]}
    steps = rows["tree 2,1 / prompt lookup"]["steps"]
    forwards = {name: row["target_forwards_per_token"] * report["new_tokens"] * len(report["prompts"])
                for name, row in rows.items()}
    assert round(forwards["tree 2,1 / prompt lookup"]) == len(report["prompts"]) + steps  # prefill + verifications
    assert forwards["tree 2,1, recompute / prompt lookup"] > forwards["tree 2,1 / prompt lookup"]


def test_dynamic_trees_are_timed_per_node_budget(models, corpus, tmp_path):
    """``--tree-nodes 2 3``: the draft model's and prompt lookup's dynamic trees within each branching, one
    method per budget and drafter, checked like the others; a step drafts at most that many nodes."""
    out = tmp_path / "spec.json"
    assert cli(*small_run(models, corpus, "--json", out), "--repeats", 1, "--tree-nodes", 2, 3) == 0
    report = json.loads(out.read_text())
    assert report["methods"] == ["autoregressive", "chain k=4 / draft model", "chain k=4 / prompt lookup",
                                 "tree 2,1 / draft model", "tree 2,1 / prompt lookup",
                                 "tree 2,1, <= 2 nodes / draft model", "tree 2,1, <= 2 nodes / prompt lookup",
                                 "tree 2,1, <= 3 nodes / draft model", "tree 2,1, <= 3 nodes / prompt lookup"]
    assert report["mismatches"] == []
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["tree 2,1, <= 2 nodes / draft model"]["steps"] >= 4


def test_chains_of_each_draft_length_are_timed(models, corpus, tmp_path):
    """``--draft-tokens 2 4``: chains of k = 2 and k = 4, per drafter, checked like the others; a k = 2 step
    drafts at most 2 tokens."""
    out = tmp_path / "spec.json"
    argv = [a for a in small_run(models, corpus, "--json", out)]
    del argv[2:4]  # --draft DIR
    assert cli(*without_trees(argv), "--branching", "--repeats", 1, "--draft-tokens", 2, 4, 2) == 0
    report = json.loads(out.read_text())
    assert report["methods"] == ["autoregressive", "chain k=2 / prompt lookup", "chain k=4 / prompt lookup"]
    assert report["mismatches"] == []
    row = {r["method"]: r for r in report["rows"]}["chain k=2 / prompt lookup"]
    assert row["accepted_per_step"] <= 2


def without_trees(argv) -> list:
    """``argv`` without its ``--branching`` shape."""
    argv = list(argv)
    at = argv.index("--branching")
    return argv[:at] + argv[at + 2:]


def test_branching_alone_times_chains_only(models, corpus, tmp_path):
    out = tmp_path / "spec.json"
    assert cli(*without_trees(small_run(models, corpus, "--json", out)), "--repeats", 1, "--branching") == 0
    assert json.loads(out.read_text())["methods"] == ["autoregressive", "chain k=4 / draft model",
                                                      "chain k=4 / prompt lookup"]


def test_batches_time_chains_in_lockstep_against_batched_autoregressive_decoding(models, corpus, tmp_path, capsys):
    """``--batch 2``: the two prompts decoded as one batch by every method (a draft model per row), chains
    only, each output checked against batched greedy decoding."""
    out = tmp_path / "spec.json"
    assert cli(*without_trees(small_run(models, corpus, "--json", out)), "--repeats", 1, "--batch", 2,
               "--chain-batching", "per_row", "lockstep") == 0
    report = json.loads(out.read_text())
    assert report["batch"] == 2 and report["mismatches"] == []
    assert report["methods"] == ["autoregressive", "chain k=4, per row / draft model", "chain k=4, lockstep / draft model",
                                 "chain k=4, per row / prompt lookup", "chain k=4, lockstep / prompt lookup"]
    rows = {r["method"]: r for r in report["rows"]}
    assert all(r["calls"] == 1 for r in rows.values())  # one batch of 2 prompts, one round
    assert rows["autoregressive"]["tokens_per_s"] == pytest.approx(2 * 12 / rows["autoregressive"]["round_seconds"][0])
    assert "in batches of 2 prompts (chains per row" in capsys.readouterr().out
    assert cli(*small_run(models, corpus, "--json", out), "--repeats", 1, "--batch", 2) == 0  # with trees
    report = json.loads(out.read_text())
    assert report["mismatches"] == [] and "tree 2,1 / draft model" in report["methods"]


@pytest.mark.parametrize("extra,message", [
    (["--batch", 0], "--batch must be >= 1, got 0"),
    (["--batch", 3], "--batch 3 must divide --prompts 2"),
    (["--chain-batching", "lockstep"], "--chain-batching: the ways of advancing a batch's rows differ only at --batch"),
    (["--batch", 2, "--branching", "2,1", "--tree-commit", "recompute"], "--tree-commit recompute: the trees of a batch"),
    (["--batch", 2, "--chain-batching", "per_row", "--chain-rollback", "replay"],
     "--chain-batching per_row commits each row by state selection"),
])
def test_bad_batches_are_usage_errors(models, corpus, extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(*without_trees(small_run(models, corpus)), *extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
