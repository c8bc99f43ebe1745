"""``lrnn pretrain-sweep``: the spec's grid and run names, the plan (reuse / resume / start / refuse, checked
before anything runs), a sweep that resumes an interrupted run and reuses finished ones, and bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrnn.models import LanguageModel
from lrnn.training import read_log
from lrnn.training.pretrain import PretrainConfig, pretrain
from lrnn.training.pretrain_sweep import (PretrainSweepSpec, plan_pretrain_sweep, run_pretrain_plan,
                                          run_pretrain_sweep)
from tests.training.pretrain_testkit import TINY_FIELDS, make_corpus

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(quiet=True, print_fn=lambda _: None)


@pytest.fixture(scope="module")
def corpus_and_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_sweep")
    return make_corpus(root / "corpus"), root / "cache"


def tiny_spec(corpus: Path, **changes) -> PretrainSweepSpec:
    """DeltaNet with both ranges on the tiny corpus: two runs of 4 steps."""
    base = {k: v for k, v in TINY_FIELDS.items() if k != "mixer"} | {"data": [str(corpus)]}
    return PretrainSweepSpec.from_dict({"models": ["deltanet"], "base": base, **changes})


def _train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_log(run_dir / "log.jsonl") if r["kind"] == "train"]


# ---- the grid ------------------------------------------------------------------------------------
def test_run_names_ranges_variants_and_merged_mixer_kwargs():
    spec = PretrainSweepSpec.from_dict({
        "models": ["attention", "deltaproduct:2", "mamba-small_state"], "ranges": ["[0, 1]", "[-1,1]"],
        "seeds": [0, 3], "base": {"d_model": 32, "mixer_kwargs": {"mamba": {"expand": 1}}},
        "variants": {"mamba-small_state": {"mixer": "mamba", "mixer_kwargs": {"mamba": {"d_state": 4}}}},
        "model_overrides": {"attention": {"d_intermediate": 96}}})
    runs = dict(spec.runs())
    assert list(runs) == ["attention-base-s0", "attention-base-s3",  # no switch: once, as "base"
                          "deltaproduct2-pos-s0", "deltaproduct2-pos-s3",
                          "deltaproduct2-neg-s0", "deltaproduct2-neg-s3",
                          "mamba-small_state-pos-s0", "mamba-small_state-pos-s3", "mamba-small_state-neg-s0",
                          "mamba-small_state-neg-s3"]
    assert runs["attention-base-s3"].negative_eigenvalues is False and runs["attention-base-s3"].seed == 3
    assert runs["attention-base-s0"].d_intermediate == 96 and runs["mamba-small_state-neg-s0"].d_intermediate == 256
    assert runs["deltaproduct2-neg-s0"].mixer_kwargs == {"deltaproduct": {"num_householder": 2},
                                                         "mamba": {"expand": 1}}
    assert runs["mamba-small_state-neg-s0"].negative_eigenvalues is True
    assert runs["mamba-small_state-neg-s0"].mixer_kwargs == {"mamba": {"expand": 1, "d_state": 4}}


def test_the_committed_spec_reproduces_the_lm_comparison_runs_of_base_json():
    spec = PretrainSweepSpec.load(REPO / "docs/results/lm/spec.json")
    base = PretrainConfig.load(REPO / "docs/results/lm/base.json").to_dict()
    runs = dict(spec.runs())
    widths = {"attention": 1024, "deltanet": 1024, "gated_deltanet": 928, "mamba2": 768}
    assert sorted(runs) == sorted(["attention-base-s0"] + [f"{m}-{r}-s0" for m in widths if m != "attention"
                                                           for r in ("pos", "neg")])
    for name, config in runs.items():
        mixer = name.rsplit("-", 2)[0]
        expected = base | {"mixer": mixer, "d_intermediate": widths[mixer], "negative_eigenvalues": "-neg-" in name}
        assert config.to_dict() == expected, name


@pytest.mark.parametrize("fields, message", [
    ({"modles": ["deltanet"]}, r"unknown pretrain sweep spec key\(s\) \['modles'\]"),
    ({"models": ["deltanett"]}, r"unknown model 'deltanett'"),
    ({"models": []}, r"models must be a non-empty list"),
    ({"ranges": ["[0,2]"]}, r"ranges must be among"),
    ({"seeds": [0, 0]}, r"seeds lists \['0'\] more than once"),
    ({"base": {"stepz": 3}}, r"base has unknown PretrainConfig field\(s\) \['stepz'\]"),
    ({"base": {"seed": 1}}, r"base may not set \['seed'\]"),
    ({"models": ["attention"], "model_overrides": {"attention": {"negative_eigenvalues": True}}},
     r"model_overrides\['attention'\] may not set \['negative_eigenvalues'\]"),
    ({"model_overrides": {"mamba": {"steps": 3}}}, r"model_overrides \['mamba'\] name no model"),
    ({"models": ["td"], "variants": {"td": {"steps": 3}}}, r"variant 'td' must set its mixer"),
    ({"models": ["mamba"], "variants": {"mamba": {"mixer": "mamba"}}}, r"variant 'mamba' is named like a mixer"),
    ({"models": ["a/b"], "variants": {"a/b": {"mixer": "mamba"}}}, r"a variant name must be"),
    ({"models": ["td"], "variants": {"td": {"mixer": "mambo"}}}, r"unknown mixer 'mambo'"),
    ({"base": {"steps": 0}}, r"steps must be"),
    ({"models": ["deltanet"], "variants": {"td": {"mixer": "mamba"}}}, r"variants \['td'\] name no model"),
])
def test_bad_specs_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        PretrainSweepSpec.from_dict(fields)


# ---- plan, resume, reuse, refuse -----------------------------------------------------------------
def test_a_sweep_resumes_an_interrupted_run_reuses_finished_ones_and_writes_the_report(corpus_and_cache, tmp_path):
    corpus, cache = corpus_and_cache
    spec = tiny_spec(corpus)
    configs = dict(spec.runs())
    assert list(configs) == ["deltanet-pos-s0", "deltanet-neg-s0"]
    pretrain(configs["deltanet-pos-s0"], tmp_path / "runs" / "deltanet-pos-s0", stop_after=2, cache_dir=cache, **QUIET)
    plan = plan_pretrain_sweep(spec, tmp_path)
    assert plan.states == {"deltanet-pos-s0": "resumed", "deltanet-neg-s0": "new"}
    assert not (tmp_path / "runs" / "deltanet-neg-s0").exists() and not (tmp_path / "report.md").exists()

    callers_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        summary = run_pretrain_plan(plan, cache_dir=cache, quiet=True, command="lrnn pretrain-sweep --spec s.json")
        assert torch.get_num_threads() == 2  # trained in this process with 1 thread, then the caller's again
    finally:
        torch.set_num_threads(callers_threads)
    assert summary["done"] == ["deltanet-pos-s0", "deltanet-neg-s0"] and summary["failed"] == {}
    assert summary["resumed"] == ["deltanet-pos-s0"] and summary["skipped"] == 0
    assert _train_steps(tmp_path / "runs" / "deltanet-pos-s0") == [1, 2, 3, 4]  # continued, not restarted
    assert (tmp_path / "report.md").read_text().count("lrnn pretrain-sweep --spec s.json") == 1

    # Finished runs are reused: nothing trains again, the report is rewritten from the same results.
    results = {name: (tmp_path / "runs" / name / "result.json").read_text() for name in configs}
    assert plan_pretrain_sweep(spec, tmp_path).states == {name: "finished" for name in configs}
    again = run_pretrain_sweep(spec, tmp_path, cache_dir=cache, quiet=True)
    assert again["skipped"] == 2 and again["done"] == [] and "report" in again
    assert {name: (tmp_path / "runs" / name / "result.json").read_text() for name in configs} == results


def test_run_directories_of_another_config_are_refused_before_anything_runs(corpus_and_cache, tmp_path):
    corpus, cache = corpus_and_cache
    spec = tiny_spec(corpus)
    other = tiny_spec(corpus, base=tiny_spec(corpus).base | {"steps": 3})
    pretrain(dict(other.runs())["deltanet-neg-s0"], tmp_path / "runs" / "deltanet-neg-s0", stop_after=2,
             cache_dir=cache, **QUIET)
    (tmp_path / "runs" / "deltanet-pos-s0").mkdir()
    (tmp_path / "runs" / "deltanet-pos-s0" / "notes.txt").write_text("mine\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=r"2 run directories hold another run.*deltanet-pos-s0 \(no config.json, "
                                         r"but notes.txt\).*deltanet-neg-s0 \(its config.json differs in "
                                         r"\['steps'\]\).*another --out"):
        run_pretrain_sweep(spec, tmp_path, cache_dir=cache, quiet=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_seed_the_report_could_not_pool_with_finished_runs_is_refused_at_planning(corpus_and_cache, tmp_path):
    corpus, cache = corpus_and_cache
    run_pretrain_sweep(tiny_spec(corpus, ranges=["[-1,1]"]), tmp_path, cache_dir=cache, quiet=True, report=False)
    longer = tiny_spec(corpus, ranges=["[-1,1]"], seeds=[1], base=tiny_spec(corpus).base | {"steps": 5})
    # Before: seed 1 trained with steps 5, then the report refused to pool it with seed 0 (steps 4).
    with pytest.raises(ValueError, match=r"deltanet \[-1, 1\]: .*deltanet-neg-s0 and .*deltanet-neg-s1 differ in "
                                         r"steps 4 vs 5.*another --out"):
        plan_pretrain_sweep(longer, tmp_path)
    assert plan_pretrain_sweep(longer, tmp_path, report=False).states == {"deltanet-neg-s1": "new"}
    same = tiny_spec(corpus, ranges=["[-1,1]"], seeds=[1])
    assert plan_pretrain_sweep(same, tmp_path).states == {"deltanet-neg-s1": "new"}


def test_fields_a_resumed_run_may_change_do_not_make_another_run(corpus_and_cache, tmp_path):
    corpus, cache = corpus_and_cache
    spec = tiny_spec(corpus, ranges=["[-1,1]"])
    config = dict(spec.runs())["deltanet-neg-s0"]
    saved = PretrainConfig.from_dict(config.to_dict() | {"log_every": 2, "checkpoint_every": 1})
    pretrain(saved, tmp_path / "runs" / "deltanet-neg-s0", stop_after=1, cache_dir=cache, **QUIET)
    assert plan_pretrain_sweep(spec, tmp_path).states == {"deltanet-neg-s0": "resumed"}


def test_a_model_that_cannot_be_built_is_refused_at_planning(tmp_path):
    spec = PretrainSweepSpec.from_dict({"models": ["attention", "mamba2"], "base": {"d_model": 16}})
    # Before: the plan passed and both mamba2 runs failed in their workers (headdim 64 does not divide 32).
    with pytest.raises(ValueError, match=r"run mamba2-pos-s0: its model cannot be built: .*divisible by headdim"):
        plan_pretrain_sweep(spec, tmp_path)
    assert not tmp_path.joinpath("runs").exists()
    plan = plan_pretrain_sweep(PretrainSweepSpec.from_dict({"models": ["attention"], "base": {"d_model": 16}}),
                               tmp_path)
    model = LanguageModel(dict(plan.runs)["attention-base-s0"].model_config())
    assert plan.parameters == {"attention-base-s0": sum(p.numel() for p in model.parameters())}


def test_report_files_the_sweep_did_not_write_are_refused_at_planning(corpus_and_cache, tmp_path):
    corpus, _ = corpus_and_cache
    (tmp_path / "report.md").write_text("the lead's notes\n")
    with pytest.raises(ValueError, match=r"holds report.md, not written by an earlier LM report"):
        plan_pretrain_sweep(tiny_spec(corpus), tmp_path)
    assert plan_pretrain_sweep(tiny_spec(corpus), tmp_path, report=False).states


def test_a_sweep_under_torchrun_is_refused(corpus_and_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"not under torchrun"):
        plan_pretrain_sweep(tiny_spec(corpus_and_cache[0]), tmp_path)


def test_spawned_workers_train_the_runs(corpus_and_cache, tmp_path):
    corpus, cache = corpus_and_cache
    summary = run_pretrain_sweep(tiny_spec(corpus), tmp_path, workers=2, cache_dir=cache, quiet=True, report=False)
    assert sorted(summary["done"]) == ["deltanet-neg-s0", "deltanet-pos-s0"] and summary["failed"] == {}
    for name in summary["done"]:
        result = json.loads((tmp_path / "runs" / name / "result.json").read_text())
        assert result["finished"] and result["config"]["negative_eigenvalues"] == ("-neg-" in name)
