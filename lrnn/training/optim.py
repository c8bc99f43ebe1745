"""AdamW with decay-free parameter groups, S4D's SSM group, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from lrnn.validation import check_number

SSM_FLAG = "_ssm_param"
"""The attribute ``lrnn.layers.S4D`` sets on its SSM parameters (A, B, log_dt; see ``s4d_param_groups``)."""


def parameter_groups(model: nn.Module, weight_decay: float, lr: float = 1.0,
                     ssm_lr: float | None = None) -> list[dict]:
    """AdamW groups ``[decay, no_decay]``, plus ``ssm`` when ``ssm_lr`` is set and the model has SSM parameters.

    * decay: matrices, weight decay ``weight_decay``.
    * no_decay: 1-D parameters (norm scales, biases, per-head constants such as ``D``) and parameters
      flagged ``param._no_weight_decay = True`` (Mamba's ``A_log``, ``dt_bias``: decaying them would pull
      the decays toward fixed values); weight decay 0.
    * ssm: parameters flagged ``param._ssm_param = True`` (S4D's A, B and dt, the same flag
      ``lrnn.layers.s4d_param_groups`` uses) with learning rate ``ssm_lr`` and weight decay 0. With
      ``ssm_lr=None`` they join no_decay (same lr as the rest).

    Every group holds ``lr_scale``, its learning rate over ``lr`` (1 for decay / no_decay,
    ``ssm_lr / lr`` for ssm), which ``set_learning_rate`` multiplies the scheduled lr by, and ``lr``
    itself. The order (decay, no_decay, then ssm only if present) keeps optimiser states of models
    without SSM parameters identical to those of two-group runs.
    """
    check_number("weight_decay", weight_decay, 0)
    check_number("lr", lr, 0)
    if ssm_lr is not None:
        check_number("ssm_lr (None: the same lr as the rest)", ssm_lr, 0, strict=True)
        if not lr > 0:
            raise ValueError(f"lr must be > 0 when ssm_lr is set (lr_scale = ssm_lr / lr), got {lr!r}")
    decay, no_decay, ssm = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if ssm_lr is not None and getattr(param, SSM_FLAG, False):
            ssm.append(param)
        elif param.ndim < 2 or getattr(param, "_no_weight_decay", False) or getattr(param, SSM_FLAG, False):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr, "lr_scale": 1.0}]
    if ssm:
        groups.append({"params": ssm, "weight_decay": 0.0, "lr": ssm_lr, "lr_scale": ssm_lr / lr})
    return groups


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                   ssm_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups(model, weight_decay, lr, ssm_lr)``."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay, lr, ssm_lr), lr=lr, betas=betas)


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
    """Set every group's lr to ``value * group["lr_scale"]`` (scale 1 for groups without one), so a
    schedule computed for the base lr keeps each group's ratio to it (S4D's SSM group included)."""
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)
