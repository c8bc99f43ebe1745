"""End to end: a one-layer DeltaNet with eigenvalues in [-1, 1] learns parity on lengths 3-40 and keeps
it on longer sequences (41-100).

Seeded and single-threaded, so the outcome is fixed for a given torch build; measured: scaled accuracy
1.000 in both test bins after 400 steps (about 13 s on one core), against a threshold of 0.9. (The
[0, 1] contrast is shown by ``lrnn demo``; it would double this test's time.)
"""

from __future__ import annotations

from lrnn.training import RunConfig, train


def _config(negative: bool) -> RunConfig:
    return RunConfig(task="parity", mixer="deltanet", negative_eigenvalues=negative, n_layers=1, d_model=32,
                     heads=2, steps=400, batch_size=64, lr=1e-2, weight_decay=0.0, train_min=3, train_max=40,
                     eval_min=41, eval_max=100, eval_bins=2, eval_samples=64, log_every=50, seed=0)


def test_negative_eigenvalues_learn_parity_and_generalise():  # one thread: conftest's autouse fixture
    result = train(_config(True), None, quiet=True).result
    assert all(b["scaled_accuracy"] >= 0.9 for b in result["eval"]["bins"]), result["eval"]["bins"]
