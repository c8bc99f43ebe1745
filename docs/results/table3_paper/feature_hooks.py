"""Helpers shared by the diagnosis scripts of this folder (run as scripts, so a plain import): ``features_hook``
(see and edit a layer's scan inputs) and ``trained_runs`` (the trained models of finished runs)."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def features_hook(model: nn.Module, layer_type: type, edit=None, record=None):
    """Wrap the ``_features`` method of every ``layer_type`` layer of ``model`` (the tuple of the scan's
    inputs it returns): ``edit(*features)`` may replace them, ``record(*features)`` sees them."""
    layers = [m for m in model.modules() if isinstance(m, layer_type)]
    for layer in layers:
        real = layer._features

        def wrapped(*args, real=real, **kwargs):
            out = real(*args, **kwargs)
            out = out if edit is None else edit(*out)
            if record is not None:
                record(*out)
            return out
        layer._features = wrapped
    try:
        yield layers
    finally:
        for layer in layers:
            del layer._features


def trained_runs(runs):
    """For each run directory with a trained ``model/`` (the sweep writes it; it is not committed): (run, model
    in eval mode, run config, 64 test strings of 256 bits [64, 256], where they hold a 1-bit); runs without
    one are named and skipped."""
    import torch

    from lrnn.training import load_run, make_eval_task

    for run in runs:
        if not (run / "model").is_dir():
            print(f"{run.name}: no model/ (unfinished or not run here)")
            continue
        saved = load_run(run)
        ids = make_eval_task(saved.config).sample(64, 256, 256, torch.Generator().manual_seed(0)).inputs
        yield run, saved.model.eval(), saved.config, ids, ids == 1  # bit 1 is token 1, bit 0 token 0
