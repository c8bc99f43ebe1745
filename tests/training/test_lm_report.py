"""``lrnn pretrain-report``: the numbers of the LM comparison are those of the runs' result.json and logs,
seeds pool only within one experiment, instability is counted as documented, samples are generated
(seeded), the report never overwrites files it did not write; and the two commands' command lines."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from lrnn.cli import main
from lrnn.training import read_log
from lrnn.training.lm_report import (SAMPLE_PROMPTS, SPIKE_RATIO, LMRun, collect_lm_runs, generate_samples,
                                     prepare_lm_report, write_lm_report)
from lrnn.training.pretrain_sweep import PretrainSweepSpec, run_pretrain_sweep
from tests.training.pretrain_testkit import TINY_FIELDS, make_corpus


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished tiny sweep: attention (no switch) and DeltaNet with both ranges, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("lm_report")
    corpus, cache = make_corpus(root / "corpus"), root / "cache"
    base = {k: v for k, v in TINY_FIELDS.items() if k != "mixer"} | {"data": [str(corpus)]}
    spec = PretrainSweepSpec.from_dict({"models": ["attention", "deltanet"], "seeds": [0, 1], "base": base})
    summary = run_pretrain_sweep(spec, root / "sweep", cache_dir=cache, quiet=True, report=False)
    assert len(summary["done"]) == 6 and not summary["failed"]
    return root / "sweep" / "runs"


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_the_report_numbers_are_those_of_the_result_files_and_logs(sweep, tmp_path):
    written = write_lm_report(sweep, tmp_path, command="lrnn pretrain-report RUNS", samples=False)
    summary = json.loads(written["summary"].read_text())
    report = written["report"].read_text()
    assert report.count("Produced by `lrnn pretrain-report RUNS`") == 1
    assert len(summary["runs"]) == 6
    for run in summary["runs"]:
        result, log = _result(Path(run["path"])), read_log(Path(run["path"]) / "log.jsonl")
        train = [r for r in log if r["kind"] == "train"]
        for name in ("val_bpb", "val_loss", "parameters", "tokens", "train_seconds"):
            assert run[name] == result[name], name
        assert run["final_train_loss"] == train[-1]["loss"]
        assert run["tokens_per_s"] == statistics.median(r["tokens_per_s"] for r in train)
        assert f"{result['val_bpb']:.4f} (s{run['seed']})" in report  # each seed's bits per byte
    rows = {(row["model"], row["range"]): row for row in summary["rows"]}
    assert sorted(rows) == [("attention", "-"), ("deltanet", "[-1, 1]"), ("deltanet", "[0, 1]")]
    bpb = {key: [_result(sweep / name)["val_bpb"] for name in row["runs"]] for key, row in rows.items()}
    for key, row in rows.items():
        assert row["val_bpb_per_seed"] == bpb[key] and row["val_bpb"] == pytest.approx(statistics.fmean(bpb[key]))
        assert f"mean **{row['val_bpb']:.4f}**" in report
    (difference,) = summary["range_differences"]
    expected = statistics.fmean(bpb[("deltanet", "[-1, 1]")]) - statistics.fmean(bpb[("deltanet", "[0, 1]")])
    assert difference["model"] == "deltanet" and difference["neg_minus_pos"] == pytest.approx(expected)
    pos, neg = difference["pos_val_bpb"], difference["neg_val_bpb"]
    assert f"| deltanet | {pos:.4f} | {neg:.4f} | {expected:+.4f} |" in report
    assert summary["varying_config"] == ["mixer", "negative_eigenvalues", "seed"]
    assert written["curves"].read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "samples.md").exists()


def test_samples_are_generated_from_each_model_with_a_fixed_seed(sweep, tmp_path):
    runs = [run for run in collect_lm_runs(sweep) if run.seed == 0]
    first = generate_samples(runs, max_new_tokens=8)
    assert first == generate_samples(runs, max_new_tokens=8)  # seeded: the same text again
    assert [(s["run"], s["prompt"]) for s in first] == [(run.name, p) for run in runs for p in SAMPLE_PROMPTS]
    assert all(s["text"].startswith(s["prompt"]) and len(s["text"]) > len(s["prompt"]) for s in first)
    written = write_lm_report(sweep, tmp_path)
    samples = written["samples"].read_text()
    for sample in generate_samples(collect_lm_runs(sweep)):
        assert f"## {sample['run']}" in samples and sample["text"] in samples


def _fake_run(losses: list[float], norms: list[float], steps: int = 8, warmup_fraction: float = 0.25) -> LMRun:
    log = [{"kind": "train", "step": i + 1, "loss": loss, "grad_norm": norm, "tokens_per_s": 1.0,
            "flops_fraction": 0.1} for i, (loss, norm) in enumerate(zip(losses, norms))]
    config = {"steps": steps, "warmup_fraction": warmup_fraction}
    return LMRun("x", Path("x"), "x", "-", 0, {"config": config}, log)


def test_loss_spikes_and_grad_norms_count_after_warm_up_only():
    # warm-up: round(0.25 * 8) = 2 steps; the lowest loss before step 5 is 5.0, before step 7 it is 4.0
    run = _fake_run([10.0, 12.0, 5.0, 5.4, 5.6, 4.0, 4.5, 4.3], [50.0, 40.0, 1.0, 2.5, 1.0, 1.0, 2.0, 1.0])
    assert SPIKE_RATIO == 1.1
    assert run.loss_spikes == 2  # steps 5 (5.6 > 5.5) and 7 (4.5 > 4.4); step 2 is in the warm-up
    assert run.max_grad_norm == 2.5
    assert _fake_run([10.0, 9.0], [3.0, 3.0]).max_grad_norm is None  # nothing logged after warm-up


def test_rows_pool_only_seeds_of_one_experiment(sweep, tmp_path):
    for name in ("deltanet-pos-s0", "deltanet-pos-s1"):
        shutil.copytree(sweep / name, tmp_path / name)
    path = tmp_path / "deltanet-pos-s1" / "result.json"
    result = _result(tmp_path / "deltanet-pos-s1")
    result["config"]["lr"] = 0.5
    path.write_text(json.dumps(result))
    with pytest.raises(ValueError, match=r"deltanet \[0, 1\]: .*deltanet-pos-s0 and .*deltanet-pos-s1 differ in lr"):
        prepare_lm_report(tmp_path)


def test_samples_need_every_exported_model(sweep, tmp_path):
    shutil.copytree(sweep / "deltanet-pos-s0", tmp_path / "deltanet-pos-s0")
    shutil.rmtree(tmp_path / "deltanet-pos-s0" / "model")
    with pytest.raises(ValueError, match=r"missing: .*deltanet-pos-s0/model"):
        prepare_lm_report(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert "samples" not in write_lm_report(tmp_path, tmp_path / "out", samples=False)


def test_a_run_name_that_contradicts_its_config_is_refused(sweep, tmp_path):
    shutil.copytree(sweep / "deltanet-pos-s0", tmp_path / "deltanet-neg-s0")
    with pytest.raises(ValueError, match=r"name 'deltanet-neg-s0' says range \[-1, 1\] and seed 0, but its config "
                                         r"has range \[0, 1\]"):
        prepare_lm_report(tmp_path)


def test_results_that_are_not_pretraining_runs_are_refused(tmp_path):
    (tmp_path / "parity").mkdir()
    (tmp_path / "parity" / "result.json").write_text(json.dumps({"finished": True, "score": 1.0, "config": {}}))
    with pytest.raises(ValueError, match=r"not a pretraining run's result"):
        prepare_lm_report(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no finished pretraining runs"):
        prepare_lm_report(tmp_path / "empty")


def test_the_report_replaces_only_its_own_files(sweep, tmp_path):
    (tmp_path / "comparison.png").write_text("someone's plot\n")
    (tmp_path / "notes.md").write_text("kept\n")
    with pytest.raises(ValueError, match=r"holds comparison.png, not written by an earlier LM report.*--force"):
        prepare_lm_report(sweep, tmp_path)
    assert (tmp_path / "comparison.png").read_text() == "someone's plot\n"
    write_lm_report(sweep, tmp_path, overwrite=True, samples=False)
    write_lm_report(sweep, tmp_path, samples=False)  # its own files now: replaced without --force
    assert f"Produced by `lrnn pretrain-report {sweep} --out {tmp_path}`" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "notes.md").read_text() == "kept\n"
    assert json.loads((tmp_path / "summary.json").read_text())["kind"] == "lrnn pretrain-report"


# ---- the command line ----------------------------------------------------------------------------
def test_pretrain_report_command(sweep, tmp_path, capsys):
    assert main(["pretrain-report", str(sweep), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"Produced by `lrnn pretrain-report {sweep} --out {tmp_path}`" in out
    assert "| deltanet | [-1, 1] |" in out and (tmp_path / "samples.md").is_file()
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain-report", str(tmp_path / "missing")])
    assert exit_.value.code == 2
    assert "lrnn pretrain-report: error: results directory not found" in capsys.readouterr().err


def test_pretrain_sweep_command_dry_run_and_bad_spec(sweep, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"models": ["deltanet"], "base": {"steps": 4}}))
    assert main(["pretrain-sweep", "--spec", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "deltanet-pos-s0: new (" in out and "deltanet-neg-s0: new (" in out
    assert not (tmp_path / "out").exists()
    spec.write_text(json.dumps({"models": ["deltanet"], "base": {"steps": 4, "seed": 2}}))
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain-sweep", "--spec", str(spec), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "base may not set ['seed']" in err


def test_pretrain_sweep_command_refuses_a_missing_corpus_before_any_run(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"models": ["deltanet"], "base": {"data": [str(tmp_path / "no-such-corpus")]}}))
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain-sweep", "--spec", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    assert exit_.value.code == 2
    assert "no-such-corpus" in capsys.readouterr().err and not (tmp_path / "out").exists()
