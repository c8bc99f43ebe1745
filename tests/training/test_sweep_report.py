"""Sweep grids, the parallel sweep end to end (2 runs, 2 workers), and the report's statistics."""

from __future__ import annotations

import json

import pytest

from training_testkit import tiny_config
from lrnn.training import train
from lrnn.training.report import (PUBLISHED, cell_statistics, collect_results, markdown_table, median_mad,
                                  plot_curves, plot_training, published_table, training_curves, write_report)
from lrnn.training.sweep import SweepSpec, run_sweep

TINY = dict(n_layers=1, d_model=8, heads=2, steps=3, batch_size=4, train_min=3, train_max=8, eval_min=8,
            eval_max=12, eval_bins=2, eval_samples=4, log_every=1, chunk_size=8)


def test_grid_expansion():
    spec = SweepSpec(tasks=["parity"], models=["attention", "deltaproduct:2", "mamba"], ranges=["[0, 1]", "[-1,1]"],
                     lrs=[1e-3, 1e-2], seeds=[0, 1], protocol="paper", base=dict(TINY),
                     model_overrides={"attention": {"n_layers": 2}})
    runs = spec.runs()
    # attention has no eigenvalue range: 1 x 2 x 2; the others 2 ranges x 2 lrs x 2 seeds each.
    assert len(runs) == 4 + 8 + 8
    names = [n for n, _ in runs]
    assert len(set(names)) == len(names)
    assert "parity-deltaproduct2-neg-lr0.01-s1" in names and "parity-attention-base-lr0.001-s0" in names
    configs = dict(runs)
    assert configs["parity-attention-base-lr0.001-s0"].n_layers == 2
    assert configs["parity-deltaproduct2-neg-lr0.01-s1"].n_h == 2
    assert configs["parity-mamba-pos-lr0.001-s0"].negative_eigenvalues is False
    assert configs["parity-mamba-pos-lr0.001-s0"].eval_max == 256  # the protocol wins over base lengths


@pytest.mark.parametrize("fields, match", [({"models": ["gru"]}, "unknown model"), ({"ranges": ["[0,2]"]}, "ranges"),
                                           ({"lrs": []}, "lrs"), ({"protocol": "x"}, "protocol"),
                                           ({"modelz": ["mamba"]}, "unknown sweep spec key")])
def test_bad_specs(fields, match):
    with pytest.raises(ValueError, match=match):
        SweepSpec.from_dict(fields)


def test_spec_files(tmp_path):
    (tmp_path / "s.toml").write_text('tasks = ["parity"]\nmodels = ["deltanet"]\nseeds = [0, 1]\n[base]\nsteps = 5\n')
    spec = SweepSpec.load(tmp_path / "s.toml")
    assert spec.seeds == [0, 1] and spec.base == {"steps": 5}
    (tmp_path / "s.json").write_text(json.dumps({"lrs": [0.1]}))
    assert SweepSpec.load(tmp_path / "s.json").lrs == [0.1]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        SweepSpec.load(tmp_path / "bad.json")


def test_sweep_two_workers_resumable_with_report(tmp_path):
    spec = SweepSpec(tasks=["parity"], models=["deltanet"], ranges=["[0,1]", "[-1,1]"], base=dict(TINY))
    summary = run_sweep(spec, tmp_path, workers=2, threads=1, quiet=True)
    assert summary["failed"] == {} and sorted(summary["done"]) == ["parity-deltanet-neg-lr0.001-s0",
                                                                   "parity-deltanet-pos-lr0.001-s0"]
    for name in summary["done"]:
        assert (tmp_path / "runs" / name / "result.json").is_file()
    assert (tmp_path / "report.md").is_file() and (tmp_path / "parity.png").stat().st_size > 1000
    assert (tmp_path / "parity.png").read_bytes()[:4] == b"\x89PNG"
    again = run_sweep(spec, tmp_path, workers=2, quiet=True, report=False)
    assert again["skipped"] == 2 and again["done"] == []


def _fake_result(task, model, rng, lr, seed, score):
    bins = [{"min_length": 10, "max_length": 20, "score": score}]
    return {"finished": True, "task": task, "model": model, "range": rng, "lr": lr, "seed": seed, "score": score,
            "path": f"{model}{rng}{lr}{seed}", "config": {"train_min": 3, "train_max": 9},
            "eval": {"bins": bins, "answer_positions": "final"}}


def test_cell_statistics_by_hand():
    results = [_fake_result("parity", "DeltaNet", "[-1, 1]", 1e-3, s, v) for s, v in enumerate([0.2, 0.9, 1.0])]
    results += [_fake_result("parity", "DeltaNet", "[-1, 1]", 1e-2, s, v) for s, v in enumerate([0.5, 0.6, 0.4])]
    results += [_fake_result("parity", "Transformer", "-", 1e-3, 0, 0.05)]
    cells = cell_statistics(results)
    assert [(c.model, c.range) for c in cells] == [("Transformer", "-"), ("DeltaNet", "[-1, 1]")]
    delta = cells[1]
    # lr 1e-3: median 0.9 beats lr 1e-2's 0.5; |x - 0.9| = 0.7, 0, 0.1 -> MAD 0.1; best over all six: 1.0.
    assert delta.best == 1.0 and delta.best_lr == 1e-3 and delta.runs == 6
    assert delta.median == pytest.approx(0.9) and delta.mad == pytest.approx(0.1)
    assert median_mad([1.0, 2.0, 4.0, 10.0]) == (3.0, 1.5)
    table = markdown_table(cells)
    assert "| DeltaNet | [-1, 1] | **1.000** (0.900 ± 0.100, n=6) |" in table
    assert table.splitlines()[0] == "| model | range | parity |"
    custom = markdown_table(cells, entry=lambda c: f"{c.runs} runs, best lr {c.best_lr:g}")
    assert custom.splitlines()[:2] == table.splitlines()[:2]
    assert "| DeltaNet | [-1, 1] | 6 runs, best lr " in custom


def test_report_from_a_run_directory(tmp_path):
    train(tiny_config(steps=2), tmp_path / "runs" / "a", quiet=True)
    train(tiny_config(steps=2, negative_eigenvalues=False), tmp_path / "runs" / "b", quiet=True)
    assert len(collect_results(tmp_path)) == 2
    written = write_report(tmp_path, tmp_path / "out")
    text = written["report"].read_text()
    assert "| DeltaNet | [0, 1] |" in text and "| DeltaNet | [-1, 1] |" in text and "![parity](parity.png)" in text
    assert written["parity"].is_file() and len(json.loads(written["summary"].read_text())) == 2
    with pytest.raises(ValueError, match="no finished runs"):
        write_report(tmp_path / "out")


def test_s4d_inits_as_sweep_models():
    spec = SweepSpec(tasks=["listops"], models=["s4d:legs", "s4d:ptd", "s4d", "mamba2"], ranges=["[0,1]"],
                     base=dict(TINY, d_state=4, mixer_kwargs={"dt_min": 0.01}))
    configs = dict(spec.runs())
    # plain "s4d" is the LegS init: it names the same run as "s4d:legs"
    assert sorted(configs) == ["listops-mamba2-pos-lr0.001-s0", "listops-s4d-legs-base-lr0.001-s0",
                               "listops-s4d-ptd-base-lr0.001-s0"]
    ptd = configs["listops-s4d-ptd-base-lr0.001-s0"]
    assert ptd.mixer_kwargs == {"dt_min": 0.01, "init": "ptd"} and ptd.model_label == "S4D-PTD"
    assert ptd.mixer_arguments() == {"d_state": 4, "dt_min": 0.01, "init": "ptd"}
    assert configs["listops-s4d-legs-base-lr0.001-s0"].model_label == "S4D-LegS"
    with pytest.raises(ValueError, match="init of model 's4d:fourier'"):
        SweepSpec(models=["s4d:fourier"])
    with pytest.raises(ValueError, match="n_h of model 'deltanet:legs'"):
        SweepSpec(models=["deltanet:legs"])


def test_plain_s4d_and_its_legs_variant_collide():
    # "s4d" is S4D-LegS: listing both gives the same run twice, which run_sweep refuses.
    spec = SweepSpec(tasks=["listops"], models=["s4d", "s4d:legs"], base=dict(TINY))
    assert len({n for n, _ in spec.runs()}) == 1


def test_report_of_single_bin_tasks_draws_bars_and_takes_a_title(tmp_path):
    for init in ("lin", "real"):
        train(tiny_config(mixer="s4d", mixer_kwargs={"d_state": 4, "init": init}, steps=2, eval_min=12, eval_max=12,
                          eval_bins=1), tmp_path / "runs" / init, quiet=True)
    written = write_report(tmp_path / "runs", tmp_path / "out", title="S4D inits")
    text = written["report"].read_text()
    assert text.startswith("# S4D inits\n")
    assert "| S4D-Lin | - |" in text and "| S4D-Real | - |" in text
    assert text.index("| S4D-Lin |") < text.index("| S4D-Real |")  # S4D's init order (its registry entry)
    assert written["parity"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="title"):
        write_report(tmp_path / "runs", tmp_path / "out", title=" ")


def test_published_table_sets_our_best_beside_the_paper(tmp_path):
    train(tiny_config(steps=2), tmp_path / "runs" / "a", quiet=True)  # DeltaNet [-1, 1] on parity
    cells = cell_statistics(collect_results(tmp_path / "runs"))
    ours = cells[0].best
    table = published_table(cells, "table3")
    assert table.splitlines()[0] == "| model | range | published row | parity: ours / published |"
    assert f"| DeltaNet | [-1, 1] | DeltaNet [-1,1] | {ours:.3f} / 1.000 |" in table
    assert "| Mamba | [0, 1] | Mamba [0,1] | - / 0.000 |" in table  # a published row we did not run
    written = write_report(tmp_path / "runs", tmp_path / "out", published="table3")
    text = written["report"].read_text()
    assert "Table 3 of arXiv 2411.12537" in text and "parity: ours / published" in text
    with pytest.raises(ValueError, match="published must be one of"):
        write_report(tmp_path / "runs", tmp_path / "out", published="table9")


def test_the_cli_lists_every_published_table():
    from lrnn.cli import PUBLISHED_NAMES

    assert sorted(PUBLISHED_NAMES) == sorted(PUBLISHED)


def test_cells_never_average_runs_of_different_configs():
    seeds = [_fake_result("parity", "DeltaNet", "[-1, 1]", 1e-3, s, 0.5) for s in range(3)]
    seeds[1]["config"] = {**seeds[1]["config"], "checkpoint_every": 5}  # bookkeeping: the same experiment
    seeds[2]["config"] = {**seeds[2]["config"], "d_model": 64}  # before: silently pooled with the others
    with pytest.raises(ValueError, match=r"1 report cell\(s\) mix runs.*parity / DeltaNet / \[-1, 1\]: "
                                         r"DeltaNet\[-1, 1\]0.0010 and DeltaNet\[-1, 1\]0.0012 differ in "
                                         r"d_model '<missing>' vs 64"):
        cell_statistics(seeds)
    assert cell_statistics(seeds[:2])[0].runs == 2


@pytest.fixture
def figures(monkeypatch):
    """The figures plot_curves draws, kept open instead of saved (closed after the test)."""
    import matplotlib.pyplot as plt

    import lrnn.training.report as report

    drawn = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: drawn.append(fig))
    yield drawn
    for fig in drawn:
        plt.close(fig)


def test_the_plot_keeps_its_legend_off_the_data_and_styles_apart(tmp_path, figures):
    bins = [{"min_length": 40, "max_length": 60 + 10 * i, "score": 0.1 * i} for i in range(4)]
    models = ("Mamba", "Mamba-2", "DeltaNet", "Gated DeltaNet", "DeltaProduct n_h=2")
    curves = [(f"{model} {rng}", rng == "[0, 1]", bins) for model in models for rng in ("[0, 1]", "[-1, 1]")]
    plot_curves(curves + [("Transformer", False, bins), ("LSTM", False, bins)], tmp_path / "x.png", "t",
                "scaled accuracy", (3, 40))
    fig, ax = figures[0], figures[0].axes[0]
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # before: inside, over the curves
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len({(line.get_color(), line.get_marker()) for line in lines.values()}) == 7  # one look per model
    negative, positive = lines["Mamba [-1, 1]"], lines["Mamba [0, 1]"]
    assert (negative.get_color(), negative.get_marker()) == (positive.get_color(), positive.get_marker())
    assert negative.get_linestyle() == "-" and positive.get_linestyle() != "-"
    assert positive.get_markerfacecolor() == "white" != negative.get_markerfacecolor()
    assert negative.get_linewidth() > positive.get_linewidth()


def test_curves_of_one_model_at_two_budgets_look_different(tmp_path, figures):
    bins = [{"min_length": 16, "max_length": 512, "score": 0.5}]
    labels = ["DeltaProduct n_h=2 [-1, 1], 1000 steps", "DeltaProduct n_h=2 [-1, 1], 2500 steps",
              "DeltaProduct n_h=2 [0, 1], 1000 steps"]  # as docs/results/words/length_curves.py labels them
    plot_curves([(label, "[0, 1]" in label, bins) for label in labels], tmp_path / "x.png", "t", "acc", (1, 2))
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    look = {label: (lines[label].get_color(), lines[label].get_marker()) for label in labels}
    assert look[labels[0]] != look[labels[1]]  # before: one colour for "DeltaProduct n_h=2", both solid
    assert look[labels[0]] == look[labels[2]]  # the same model at the other range: only the line style differs


def test_training_curves_are_read_from_the_logs_and_drawn_per_run(tmp_path, figures):
    for name, seed, negative in (("a", 0, True), ("b", 1, True), ("c", 0, False)):
        train(tiny_config(steps=8, eval_every=4, seed=seed, negative_eigenvalues=negative),
              tmp_path / "runs" / name, quiet=True)
    results = collect_results(tmp_path)
    train_curve, evals = training_curves(results[0])
    log = [json.loads(line) for line in (tmp_path / "runs" / "a" / "log.jsonl").read_text().splitlines()]
    assert train_curve == [(r["step"], r["accuracy"]) for r in log if r["kind"] == "train"]
    assert [step for step, _ in train_curve] == [2, 4, 6, 8] and [step for step, _ in evals] == [4, 8]
    assert evals[-1][1] == results[0]["score"]  # the last eval line is the final evaluation
    plot_training(results, "parity", tmp_path / "t.png")
    left, right = figures[0].axes[:2]
    assert len(left.get_lines()) == len(right.get_lines()) == 3  # one line per run, seeds included
    labels = [line.get_label() for line in right.get_lines()]
    assert labels.count("DeltaNet [-1, 1]") == 1 and "DeltaNet [0, 1]" in labels  # a cell's seeds: one legend entry
    assert sorted(line.get_ydata()[-1] for line in right.get_lines()) == sorted(r["score"] for r in results)
    assert plot_training(results, "arithmetic", tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_the_report_links_the_training_curves(tmp_path):
    train(tiny_config(steps=4), tmp_path / "runs" / "a", quiet=True)
    written = write_report(tmp_path, tmp_path / "out")
    assert written["parity_training.png"].read_bytes()[:4] == b"\x89PNG"
    assert "![parity training](parity_training.png)" in written["report"].read_text()
    (tmp_path / "runs" / "a" / "log.jsonl").write_text('{"kind": "train", "step": 1,\n')
    with pytest.raises(ValueError, match="line 1, is not valid JSON"):
        write_report(tmp_path, tmp_path / "out")
