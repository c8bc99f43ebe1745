"""AdamW with decay-free parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decayed by ``weight_decay``; norms, biases and flagged parameters not.

    A parameter is exempt from weight decay when it is 1-D (norm scales, biases, per-head constants such
    as ``D``) or flagged ``param._no_weight_decay = True`` (Mamba's ``A_log``, ``dt_bias``: decaying them
    would pull the decays toward fixed values).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or getattr(param, "_no_weight_decay", False)
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups(model, weight_decay)``."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas)


def learning_rate(step: int, total_steps: int, lr: float, min_lr: float, warmup_fraction: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warm-up ``lr * (step + 1) / W`` over the first ``W = round(warmup_fraction * total_steps)``
    steps, then ``min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`` with p going from 0 to 1 over the
    remaining steps. A pure function of the step, so a resumed run needs no scheduler state.
    """
    warmup = round(warmup_fraction * total_steps)
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = max(total_steps - warmup - 1, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
