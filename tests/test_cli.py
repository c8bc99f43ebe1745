"""CLI smoke tests with tiny budgets: train, eval, sweep (2 runs, 2 workers), report, bench; bad arguments,
run directories, devices, threads and what the commands say about a run's state."""

from __future__ import annotations

import json

import pytest

from lrnn.cli import _RUN_FLAGS, COMMANDS, CommandError, build_parser, main

TINY = ["--task", "parity", "--mixer", "deltanet", "--n-layers", "1", "--d-model", "8", "--heads", "2",
        "--steps", "3", "--batch-size", "4", "--train-min", "3", "--train-max", "8", "--eval-min", "8",
        "--eval-max", "12", "--eval-bins", "2", "--eval-samples", "4", "--chunk-size", "8", "--quiet",
        "--negative-eigenvalues"]


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
    plain = [a for a in TINY if a != "--negative-eigenvalues"]  # S4D has no heads, chunks or eigenvalue switch
    for flag in ("--heads", "--chunk-size"):
        del plain[plain.index(flag):plain.index(flag) + 2]
    s4d = [*plain, "--mixer", "s4d", "--mixer-kwargs", '{"d_state": 4, "init": "real"}']
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
    (["sweep", "--out", "x", "--tasks", "parity", "--models", "gru"], "unknown model"),
    (["sweep", "--out", "x", "--tasks", "parity", "--models", "deltanet", "--set", "steps"], "FIELD=VALUE"),
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


# ---- the error boundary, run directories, devices, threads, announcements ------------------------
def _one_line_error(capsys, argv: list[str], needle: str) -> None:
    """``lrnn ARGV`` exits 2 with exactly one line on stderr, containing ``needle``."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _run_command(argv: list[str]) -> int:
    """Parse ``argv`` and call its runner directly, outside ``main``'s error handling."""
    args = build_parser().parse_args(argv)
    args.command_line = "lrnn " + " ".join(argv)
    return COMMANDS[args.command](args)


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only input handling becomes CommandError: a TypeError raised by a bug inside the work propagates."""
    import lrnn.training.trainer as trainer

    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0

    def bug(*args, **kwargs):
        raise TypeError("an internal bug")

    monkeypatch.setattr(trainer, "learning_rate", bug)
    with pytest.raises(TypeError, match="an internal bug"):
        _run_command(["train", *TINY, "--out", str(tmp_path / "other")])
    with pytest.raises(TypeError, match="an internal bug"):  # main() too: no one-line message hides it
        main(["train", *TINY, "--out", str(tmp_path / "third")])
    monkeypatch.setattr(trainer, "evaluate", bug)
    with pytest.raises(TypeError, match="an internal bug"):
        _run_command(["eval", str(tmp_path / "run")])
    import lrnn.bench.check as check

    monkeypatch.setattr(check, "check_ops", bug)
    with pytest.raises(TypeError, match="an internal bug"):
        _run_command(["bench", "check", "--skip-models"])
    # ... while the same runners turn bad input into a CommandError (one line from main).
    with pytest.raises(CommandError, match="run directory not found"):
        _run_command(["eval", str(tmp_path / "missing")])


def test_train_refuses_a_directory_of_another_run_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    _one_line_error(capsys, ["train", *TINY, "--seed", "7", "--out", str(out)], "differs in ['seed']")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    _one_line_error(capsys, ["train", *TINY, "--seed", "7", "--no-resume", "--out", str(out)], "--force")
    assert main(["train", *TINY, "--seed", "7", "--force", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 7
    # Files that are no run at all are refused too.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    _one_line_error(capsys, ["train", *TINY, "--out", str(tmp_path / "mine")], "no config.json, but notes.txt")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_outputs_that_are_files_or_directories_give_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["train", *TINY, "--out", str(tmp_path / "file")], "is an existing file")
    _one_line_error(capsys, ["train", *TINY, "--out", str(tmp_path / "file" / "run")], "file is a file")
    assert (tmp_path / "file").read_text() == "x"
    # A config the model rejects leaves no run directory behind.
    _one_line_error(capsys, ["train", *TINY, "--mixer-kwargs", '{"bogus": 1}', "--out", str(tmp_path / "bad")],
                    "bogus")
    assert not (tmp_path / "bad").exists()
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    _one_line_error(capsys, ["eval", str(tmp_path / "run"), "--json", str(tmp_path)], "--json must name a file")
    _one_line_error(capsys, ["eval", str(tmp_path / "run"), "--json", str(tmp_path / "file" / "e.json")],
                    "is a file, not a directory")
    _one_line_error(capsys, ["bench", "tasks", "--tasks", "parity", "--lengths", "3-5", "--batch", "2",
                             "--repeats", "1", "--json", str(tmp_path)], "--json must name a file")


@pytest.mark.parametrize("argv, needle", [
    (["bench", "check", "--device", "cuda", "--skip-models"], "'cuda' requested but cuda is not available"),
    (["bench", "decode", "--device", "cuda"], "'cuda' requested but cuda is not available"),
    (["bench", "check", "--device", "mps"], "'mps' requested but mps is not available"),
    (["bench", "decode", "--device", "banana"], "device must be e.g. 'cpu' or 'cuda'"),
    (["train", *TINY, "--device", "cuda"], "'cuda' requested but cuda is not available"),
])
def test_unavailable_devices_give_one_line(argv, needle, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only torch, wherever the test runs
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    _one_line_error(capsys, argv, needle)


def test_resumed_finished_and_unfinished_runs_are_announced(tmp_path, capsys):
    from lrnn.training import RunConfig, train

    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    config = RunConfig.load(out / "config.json")
    score = json.loads((out / "result.json").read_text())["score"]
    capsys.readouterr()
    # Re-running a finished run shows its stored result as such.
    assert main(["train", *TINY, "--out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert out_text.startswith(f"{out} is already finished") and f"score {score:.4f}" in out_text
    # An interrupted run: eval scores its checkpoint and says so; train resumes it and says so.
    train(config, tmp_path / "part", quiet=True, stop_at_step=2)
    assert main(["eval", str(tmp_path / "part"), "--quiet"]) == 0
    assert "scoring its checkpoint of step 2 of 3" in capsys.readouterr().out
    assert main(["train", "--config", str(out / "config.json"), "--quiet", "--out", str(tmp_path / "part")]) == 0
    assert capsys.readouterr().out.startswith(f"resuming {tmp_path / 'part'} from step 2 of 3\n")


def test_eval_shows_progress_unless_quiet(tmp_path, capsys, monkeypatch):
    import sys

    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are drawn on terminals only
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert "evaluating on parity" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "run"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_eval_shares_the_flags_of_train(tmp_path, capsys):
    parser = build_parser()
    train_parser, eval_parser = (parser._subparsers._group_actions[0].choices[name] for name in ("train", "eval"))
    train_flags = {a.dest: a for a in train_parser._actions}
    for action in eval_parser._actions:
        if action.dest in _RUN_FLAGS:
            twin = train_flags[action.dest]
            assert (action.option_strings, action.type) == (twin.option_strings, twin.type), action.dest
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    assert main(["eval", str(tmp_path / "run"), "--eval-seed", "5", "--eval-batch-size", "3", "--eval-bins", "1",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["overall"]["sequences"] == 4
    _one_line_error(capsys, ["eval", str(tmp_path / "run"), "--eval-min", "0"], "eval_min")


@pytest.fixture
def restore_threads():
    import torch

    threads = torch.get_num_threads()
    yield torch
    torch.set_num_threads(threads)


def test_threads_default_to_one_and_can_be_raised(tmp_path, restore_threads):
    torch = restore_threads
    torch.set_num_threads(2)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    assert torch.get_num_threads() == 1  # the default: no stall on shared cores
    assert main(["eval", str(tmp_path / "run"), "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    assert main(["demo", "--ops", "--length", "40", "--threads", "3"]) == 0
    assert torch.get_num_threads() == 3
    assert build_parser().parse_args(["bench", "decode", "--threads", "2"]).threads == 2


def test_bench_is_a_subcommand_and_python_m_lrnn_bench_its_alias(capsys):
    from lrnn.bench import main as bench_main

    argv = ["check", "--lengths", "2", "--long-length", "3", "--skip-models"]
    assert main(["bench", *argv]) == 0
    via_lrnn = capsys.readouterr().out
    assert via_lrnn.startswith(f"# lrnn bench {' '.join(argv)}\n") and "0 failed" in via_lrnn
    assert bench_main(argv) == 0
    assert capsys.readouterr().out.splitlines()[2:-1] == via_lrnn.splitlines()[2:-1]  # the same checks
    with pytest.raises(SystemExit) as info:
        bench_main(["check", "--lengths", "0"])
    assert info.value.code == 2 and "lrnn bench check: error: lengths must be >= 1" in capsys.readouterr().err


def test_eval_refuses_json_inside_the_run_and_lengths_the_task_cannot_make(tmp_path, capsys):
    """eval --json used to overwrite the run's own files (result.json, config.json), and an eval_min below
    the task's shortest length raised a traceback from the task instead of one line."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    before = (run / "result.json").read_text()
    _one_line_error(capsys, ["eval", str(run), "--json", str(run / "result.json")], "lies inside the run directory")
    assert (run / "result.json").read_text() == before
    arithmetic = tmp_path / "arithmetic"
    tiny_arithmetic = [*TINY, "--task", "arithmetic", "--train-min", "3", "--eval-min", "8"]
    assert main(["train", *tiny_arithmetic, "--out", str(arithmetic)]) == 0
    _one_line_error(capsys, ["eval", str(arithmetic), "--eval-min", "1"], "needs lengths >=")


def test_resuming_after_the_last_checkpoint_logs_the_final_evaluation_once(tmp_path, capsys):
    """A run interrupted after its final checkpoint (no result.json yet) used to log its closing
    evaluation twice on resume."""
    import shutil

    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    (run / "result.json").unlink()
    shutil.rmtree(run / "model")
    assert main(["train", *TINY, "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "eval" for r in records) == 1
    assert sum(r["kind"] == "train" and r["step"] == 3 for r in records) == 1
