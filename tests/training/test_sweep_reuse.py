"""Sweeps reuse a run only when it is the same experiment, and overrides (--set) win over the spec."""

from __future__ import annotations

import json

import pytest
import torch

from lrnn.training import train
from lrnn.training.sweep import SweepSpec, plan_sweep, run_plan, run_sweep

TINY = dict(n_layers=1, d_model=8, heads=2, steps=3, batch_size=4, train_min=3, train_max=8, eval_min=8,
            eval_max=12, eval_bins=2, eval_samples=4, log_every=1, chunk_size=8)


def tiny_spec(**changes) -> SweepSpec:
    """One DeltaNet [-1, 1] run on parity (more with ``seeds`` / ``ranges``), trained in well under a second."""
    fields = dict(tasks=["parity"], models=["deltanet"], ranges=["[-1,1]"], base=dict(TINY))
    return SweepSpec(**{**fields, **changes})


RUN = "parity-deltanet-neg-lr0.001-s0"


def test_a_finished_run_of_another_config_is_refused_not_reused(tmp_path):
    run_sweep(tiny_spec(), tmp_path, quiet=True)
    result = (tmp_path / "runs" / RUN / "result.json").read_text()
    # Before: "1 already finished", the steps=3 result kept and reported as the steps=4 sweep's.
    with pytest.raises(ValueError, match=rf"runs/{RUN} \(steps: saved 3, now 4\).*another --out"):
        run_sweep(tiny_spec(base=dict(TINY, steps=4)), tmp_path, quiet=True)
    with pytest.raises(ValueError, match=r"steps: saved 3, now 5"):
        run_sweep(tiny_spec(), tmp_path, quiet=True, overrides={"steps": 5})
    assert (tmp_path / "runs" / RUN / "result.json").read_text() == result


def test_a_checkpointed_run_of_another_config_is_refused_before_any_run(tmp_path):
    spec = tiny_spec(seeds=[0, 1])
    names = [name for name, _ in spec.runs()]
    config = dict(spec.runs())[RUN]
    train(config, tmp_path / "runs" / RUN, stop_at_step=1, quiet=True)  # an interrupted run: checkpoint, no result
    # Before: the seed-1 run trained, then the resumed one failed inside its worker.
    with pytest.raises(ValueError, match=r"1 run directory .*d_model: saved 8, now 16"):
        run_sweep(tiny_spec(seeds=[0, 1], base=dict(TINY, d_model=16)), tmp_path, quiet=True)
    assert not (tmp_path / "runs" / names[1]).exists()
    plan = plan_sweep(spec, tmp_path)  # the same config: resumed
    assert plan.resumed == [RUN] and plan.finished == [] and [n for n, _ in plan.todo] == names


def test_runs_that_differ_only_in_logging_or_checkpoint_cadence_are_reused(tmp_path):
    run_sweep(tiny_spec(), tmp_path, quiet=True, report=False)
    plan = plan_sweep(tiny_spec(base=dict(TINY, log_every=2, checkpoint_every=1, eval_every=2)), tmp_path)
    assert plan.finished == [RUN] and plan.todo == []


def test_a_new_seed_of_another_config_would_mix_a_report_cell(tmp_path):
    run_sweep(tiny_spec(), tmp_path, quiet=True, report=False)
    # Seed 1 has its own directory, but lands in the cell of the finished seed 0, trained for 3 steps.
    with pytest.raises(ValueError, match=r"share report cells.*parity / DeltaNet / \[-1, 1\].*steps 3 vs 4"):
        plan_sweep(tiny_spec(seeds=[1], base=dict(TINY, steps=4)), tmp_path)
    assert len(plan_sweep(tiny_spec(seeds=[1]), tmp_path).todo) == 1  # the same config: fine


def test_overrides_win_over_task_and_model_overrides_and_the_protocol(tmp_path):
    spec = tiny_spec(models=["deltanet", "mamba", "s4d:ptd"], protocol="paper",
                     task_overrides={"parity": {"steps": 7, "d_model": 12}}, model_overrides={"mamba": {"steps": 9}},
                     base=dict(TINY, mixer_kwargs={"conv_size": 2}))
    # Before, --set fields went into base, where task_overrides, model_overrides and the protocol beat them.
    plan = plan_sweep(spec, tmp_path, {"steps": 2, "eval_max": 300, "heads": 4, "mixer_kwargs": {"dt_min": 0.01}})
    configs = dict(plan.runs)
    assert {c.steps for c in configs.values()} == {2} and {c.eval_max for c in configs.values()} == {300}
    assert {c.d_model for c in configs.values()} == {12}  # fields the command line leaves alone
    assert configs["parity-deltanet-neg-lr0.001-s0"].heads == 4 and configs["parity-mamba-neg-lr0.001-s0"].heads is None
    ptd = configs["parity-s4d-ptd-base-lr0.001-s0"]
    assert ptd.mixer_kwargs == {"conv_size": 2, "init": "ptd", "dt_min": 0.01}  # merged: the variant survives
    assert "set on every run, over the spec: steps=2, eval_max=300" in plan.describe()
    assert not tmp_path.joinpath("runs").exists()  # planning writes nothing


@pytest.mark.parametrize("overrides, match", [
    ({"lr": 0.1}, r"may not set \['lr'\].*lrs"),
    ({"seed": 3, "task": "s3"}, r"may not set \['seed', 'task'\]"),
    ({"n_h": 2}, r"\['n_h'\] apply to no run"),  # the grid's models do not take n_h
    ({"stepz": 2}, "unknown run config key"),
    ({"steps": 0}, "steps must be"),
])
def test_bad_overrides_are_refused_by_name(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        plan_sweep(tiny_spec(models=["mamba", "attention"]), tmp_path, overrides)


def test_unknown_tasks_and_a_file_as_destination_are_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]; known tasks: \[.*'parity'"):
        plan_sweep(tiny_spec(tasks=["parity", "nope"]), tmp_path / "a")
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope_test'\]"):
        plan_sweep(tiny_spec(), tmp_path / "a", {"eval_task": "nope_test"})
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        plan_sweep(tiny_spec(), tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "a").exists()


def test_the_plan_is_printed_and_recorded(tmp_path, capsys):
    summary = run_sweep(tiny_spec(), tmp_path, overrides={"steps": 2}, report=False)
    out = capsys.readouterr().out
    assert "sweep: tasks parity x models deltanet x ranges [-1,1] x lrs 0.001 x seeds 0 = 1 runs" in out
    assert "0 finished (reused), 0 resumed from a checkpoint, 1 new; 1 to run on 1 worker(s) x 1 thread(s)" in out
    assert summary["done"] == [RUN]
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record["overrides"] == {"steps": 2} and record["spec"]["tasks"] == ["parity"]


def test_an_in_process_sweep_keeps_the_callers_thread_count(tmp_path):
    torch.set_num_threads(2)  # the autouse fixture (tests/conftest.py) restores the thread count afterwards
    run_plan(plan_sweep(tiny_spec(), tmp_path, report=False), threads=1, quiet=True)
    assert torch.get_num_threads() == 2


def test_a_compiled_sweep_trains_compiled_models_and_reuses_eager_runs(tmp_path, monkeypatch):
    import lrnn.training.trainer as trainer

    compiled = []
    real_compile = trainer.compile_model
    monkeypatch.setattr(trainer, "compile_model", lambda model, backend: compiled.append(backend) or real_compile(
        model, backend))
    spec = SweepSpec(tasks=["parity"], models=["deltanet"], ranges=["[-1,1]"], base=dict(TINY))
    summary = run_sweep(spec, tmp_path, workers=1, quiet=True, report=False, compile_backend="eager")
    assert summary["failed"] == {} and len(summary["done"]) == 1 and compiled == ["eager"]
    assert json.loads((tmp_path / "sweep.json").read_text())["compile"] == "eager"
    eager = run_sweep(spec, tmp_path, workers=1, quiet=True, report=False)  # the finished run is reused
    assert eager["skipped"] == 1 and eager["done"] == [] and compiled == ["eager"]
    with pytest.raises(TypeError, match="compile_backend must be None or a torch.compile backend name"):
        run_sweep(spec, tmp_path / "b", quiet=True, compile_backend=object())
