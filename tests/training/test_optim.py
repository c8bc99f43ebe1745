"""The learning-rate schedule and AdamW's parameter groups."""

from __future__ import annotations

import math

import pytest

from lrnn.models import LanguageModel, ModelConfig
from lrnn.training import learning_rate, parameter_groups


def test_warmup_then_cosine_to_the_floor():
    lr = lambda s: learning_rate(s, total_steps=100, lr=1.0, min_lr=0.01, warmup_fraction=0.1)
    assert [lr(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr(9) == pytest.approx(1.0)  # last warm-up step reaches the peak
    assert lr(10) == pytest.approx(1.0)  # cosine starts at the peak
    mid = 10 + 89 / 2
    assert learning_rate(int(mid), 100, 1.0, 0.01, 0.1) == pytest.approx(
        0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    assert lr(99) == pytest.approx(0.01)  # the last step is at the floor
    values = [lr(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert learning_rate(0, 10, 0.5, 0.0, 0.0) == pytest.approx(0.5)  # no warm-up


def test_no_weight_decay_on_norms_biases_and_flagged_parameters():
    model = LanguageModel(ModelConfig(vocab_size=5, d_model=16, n_layers=1, mixer="mamba2",
                                      mixer_kwargs={"mamba2": {"headdim": 8, "d_state": 4}}, num_labels=3))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert {"layers.0.mixer.A_log", "layers.0.mixer.dt_bias", "layers.0.mixer.D", "head.bias",
            "norm_f.weight"} <= exempt
    assert {"layers.0.mixer.in_proj.weight", "head.weight", "embedding.weight"} <= decayed
