"""`lrnn sweep` / `lrnn report` at the command line: no silent grid, checks before any run, one-line errors,
--set precedence, report destinations, and the documented report commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lrnn.training.sweep
from lrnn.cli import build_parser, main
from lrnn.training import train
from lrnn.training.report import markdown_table, prepare_report

from training_testkit import tiny_config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``lrnn argv``, expecting exit code 2 with one error line and no traceback; returns that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def planned(monkeypatch):
    """Capture the plan `lrnn sweep` would run, without running it."""
    plans = []

    def capture(plan, **_):
        plans.append(plan)
        return {"failed": {}}

    monkeypatch.setattr(lrnn.training.sweep, "run_plan", capture)
    return plans


def test_a_sweep_needs_a_spec_or_an_explicit_grid(tmp_path, capsys):
    out = tmp_path / "sweep"
    # Before: a default grid (parity x deltanet x both ranges, 1000 steps at width 128) started silently.
    assert "give the grid: --spec FILE, or at least --tasks and --models" in one_line_error(
        ["sweep", "--out", str(out)], capsys)
    assert "give the grid" in one_line_error(["sweep", "--out", str(out), "--tasks", "parity"], capsys)
    assert not out.exists()


@pytest.mark.parametrize("flags, needle", [
    (["--tasks", "parity,nope", "--models", "deltanet"], "unknown task(s) ['nope']; known tasks: ["),
    (["--tasks", "parity", "--models", "deltanet,gru"], "unknown model 'gru'; mixers: ["),
    (["--tasks", "parity", "--models", "deltanet", "--set", "lr=0.1"], "may not set ['lr']"),
    (["--tasks", "parity", "--models", "deltanet", "--set", "steps=2", "--set", "steps=3"],
     "--set steps is given twice"),
])
def test_bad_grids_are_refused_before_any_run(tmp_path, capsys, flags, needle):
    out = tmp_path / "sweep"
    assert needle in one_line_error(["sweep", "--out", str(out), *flags], capsys)
    assert not out.exists()


def test_an_existing_file_as_out_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    assert "is a file, not a directory" in one_line_error(
        ["sweep", "--out", str(tmp_path / "f"), "--tasks", "parity", "--models", "deltanet"], capsys)
    train(tiny_config(steps=2), tmp_path / "runs" / "a", quiet=True)
    assert "is an existing file, not a directory" in one_line_error(
        ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "f")], capsys)
    assert (tmp_path / "f").read_text() == "mine"


def test_set_wins_over_the_specs_task_overrides(tmp_path, planned):
    spec = tmp_path / "spec.toml"
    spec.write_text('tasks = ["parity"]\nmodels = ["deltanet"]\nprotocol = "paper"\n'
                    '[task_overrides.parity]\nsteps = 7\nn_layers = 3\n')
    # Before: --set steps=2 went into base, and task_overrides' steps = 7 (and the protocol's lengths) won.
    assert main(["sweep", "--spec", str(spec), "--out", str(tmp_path / "s"), "--set", "steps=2",
                 "--set", "eval_max=100"]) == 0
    configs = [config for _, config in planned[0].runs]
    assert [(c.steps, c.eval_max, c.n_layers) for c in configs] == [(2, 100, 3)] * 2


def test_sweep_workers_default_to_one_thread():
    args = build_parser().parse_args(["sweep", "--out", "x", "--tasks", "parity", "--models", "deltanet"])
    assert args.threads == 1 and args.workers == 1


def test_report_does_not_clobber_files_it_did_not_write(tmp_path, capsys):
    train(tiny_config(steps=2), tmp_path / "runs" / "a", quiet=True)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    (out / "README.md").write_text("keep me")
    # Before: report.md was replaced without a word.
    err = one_line_error(["report", str(tmp_path / "runs"), "--out", str(out)], capsys)
    assert "holds report.md, not written by an earlier report" in err and "--force" in err
    assert (out / "report.md").read_text() == "my notes" and not (out / "parity.png").exists()
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--force"]) == 0
    assert (out / "report.md").read_text().startswith("# State-tracking results")
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0  # its own earlier report: replaced
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "parity.png", "parity_training.png", "report.md", "summary.json"]
    assert (out / "README.md").read_text() == "keep me"


def test_report_refuses_cells_that_mix_configs(tmp_path, capsys):
    train(tiny_config(steps=2), tmp_path / "runs" / "a", quiet=True)
    train(tiny_config(steps=3, seed=1), tmp_path / "runs" / "b", quiet=True)
    err = one_line_error(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")], capsys)
    assert "parity / DeltaNet / [-1, 1]" in err and "steps 2 vs 3" in err
    assert not (tmp_path / "r").exists()


def test_documented_report_commands_write_into_a_folder_of_their_own():
    # docs/training.md once sent `lrnn report ... --out docs/results`, scattering report files there.
    loose = re.compile(r"lrnn report \S+ --out docs/results/?(\s|$)")
    for path in [DOCS.parent / "README.md", DOCS / "training.md", *DOCS.glob("results/*/README.md")]:
        assert not loose.search(path.read_text()), path


@pytest.mark.parametrize("results, published", [("table3", "table3"), ("table3/longer", "table3"),
                                                ("words", None), ("words/longer", None)])
def test_committed_reports_regenerate_their_tables(tmp_path, results, published):
    committed = (DOCS / "results" / results / "report.md").read_text()
    report = prepare_report(DOCS / "results" / results / "runs", tmp_path, published=published)
    assert markdown_table(report.cells) in committed
    if published:
        assert report.comparison in committed
