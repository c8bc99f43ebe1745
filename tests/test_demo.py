"""The demos run end to end (tiny budgets: the real demo's timing is measured by hand, see docs/training.md)."""

from __future__ import annotations

from lrnn.cli.demo import parity_demo_config, run_ops_demo, run_parity_demo


def test_parity_demo_runs_prints_and_plots(tmp_path, capsys):
    plot = tmp_path / "parity.png"
    assert run_parity_demo(steps=2, plot=str(plot), models=("deltanet",), workers=1) == 0
    out = capsys.readouterr().out
    assert "DeltaNet [0, 1]" in out and "DeltaNet [-1, 1]" in out and "220-256" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_demo_configs_follow_the_protocol():
    for mixer in ("mamba", "mamba2", "deltanet"):
        config = parity_demo_config(mixer, True)
        assert (config.train_min, config.train_max, config.eval_min, config.eval_max) == (3, 40, 40, 256)
        assert config.n_layers == 1 and config.negative_eigenvalues


def test_ops_demo(capsys):
    assert run_ops_demo(length=300, seed=0, chunk_size=16) == 0
    assert "tracks parity exactly" in capsys.readouterr().out


def test_cli_help_states_the_demo_budgets():
    from lrnn.cli import DEMO_STEPS_HELP
    from lrnn.cli.demo import DEMO_SETTINGS
    from lrnn.training import RunConfig

    for mixer, (_, steps) in DEMO_SETTINGS.items():
        label = RunConfig(mixer=mixer).model_label
        assert f"{label} {steps}" in DEMO_STEPS_HELP, (mixer, steps)
