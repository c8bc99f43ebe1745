"""CLI smoke tests with tiny budgets: train, eval, sweep (2 runs, 2 workers), report; bad arguments."""

from __future__ import annotations

import json

import pytest

from lrnn.cli import main

TINY = ["--task", "parity", "--mixer", "deltanet", "--n-layers", "1", "--d-model", "8", "--heads", "2",
        "--steps", "3", "--batch-size", "4", "--train-min", "3", "--train-max", "8", "--eval-min", "8",
        "--eval-max", "12", "--eval-bins", "2", "--eval-samples", "4", "--chunk-size", "8", "--quiet"]


def test_train_then_eval(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "score" in out and "8-9" in out
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["config"]["d_model"] == 8 and result["range"] == "[-1, 1]"
    assert main(["eval", str(tmp_path / "run"), "--eval-min", "20", "--eval-max", "30", "--eval-bins", "1",
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert "20-30" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["bins"][0]["max_length"] == 30


def test_train_from_a_config_file_with_overrides(tmp_path, capsys):
    assert main(["train", *TINY, "--no-negative-eigenvalues", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--seed", "3", "--quiet",
                 "--out", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["seed"] == 3 and config["negative_eigenvalues"] is False and config["d_model"] == 8


def test_ssm_lr_and_eval_task_flags(tmp_path, capsys):
    s4d = [*TINY, "--mixer", "s4d", "--mixer-kwargs", '{"d_state": 4, "init": "real"}']
    assert main(["train", *s4d, "--ssm-lr", "none", "--eval-task", "parity", "--out", str(tmp_path / "a")]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["ssm_lr"] is None and config["eval_task"] == "parity" and config["mixer"] == "s4d"
    assert main(["train", *s4d, "--ssm-lr", "3e-4", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["ssm_lr"] == 3e-4
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "b"), "--eval-task", "parity", "--eval-bins", "1"]) == 0
    assert "on parity" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "b"), "--eval-task", "listops"])
    assert "eval_task 'listops' does not fit" in capsys.readouterr().err


def test_sweep_and_report(tmp_path, capsys):
    sets = ["--set", "n_layers=1", "--set", "d_model=8", "--set", "heads=2", "--set", "steps=2",
            "--set", "batch_size=4", "--set", "train_max=8", "--set", "eval_min=8", "--set", "eval_max=10",
            "--set", "eval_bins=1", "--set", "eval_samples=4", "--set", "chunk_size=8"]
    code = main(["sweep", "--out", str(tmp_path / "sweep"), "--tasks", "parity", "--models", "deltanet",
                 "--ranges", "both", "--workers", "2", "--quiet", *sets])
    assert code == 0
    assert (tmp_path / "sweep" / "report.md").is_file() and (tmp_path / "sweep" / "parity.png").is_file()
    assert main(["report", str(tmp_path / "sweep" / "runs"), "--out", str(tmp_path / "rep"),
                 "--published", "table3"]) == 0
    out = capsys.readouterr().out
    assert "| DeltaNet | [-1, 1] |" in out and "| DeltaNet | [-1, 1] | DeltaNet [-1,1] |" in out
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "parity.png").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["train", "--mixer", "gru"], "mixer must be one of"),
    (["train", "--steps", "0", "--quiet"], "steps must be >= 1"),
    (["train", "--steps", "ten"], "invalid int value"),
    (["train", "--mixer-kwargs", "[1]"], "expected a JSON object"),
    (["train", "--task", "nope", "--steps", "1", "--quiet"], "unknown task"),
    (["eval", "/no/such/run"], "run directory not found"),
    (["sweep", "--out", "x", "--models", "gru"], "unknown model"),
    (["sweep", "--out", "x", "--set", "steps"], "FIELD=VALUE"),
    (["sweep", "--out", "x", "--spec", "/no/such.toml"], "sweep spec not found"),
    (["report", "/no/such/dir"], "results directory not found"),
    (["train", "--ssm-lr", "fast"], "expected a number or 'none'"),
    (["demo", "--steps", "-1"], "expected an integer >= 1"),
])
def test_bad_arguments_give_one_line_errors(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
