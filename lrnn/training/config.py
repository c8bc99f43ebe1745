"""The run configuration: one dataclass that names a task, a model and a training budget.

``RunConfig`` round-trips through JSON (``to_dict`` / ``from_dict`` / ``save`` / ``load``) and builds
the ``ModelConfig`` of its model for a given task (``model_config(task)``). ``PROTOCOLS`` holds the
train / test length ranges of the published benchmarks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lrnn.layers import GENERIC_FIELDS, MIXERS, mixer_spec
from lrnn.models import ModelConfig
from lrnn.jsonconfig import JsonConfig
from lrnn.validation import check_flag, check_int, check_number


@dataclass(frozen=True)
class Protocol:
    """Train and test length ranges (inclusive) of a benchmark, and the number of test length bins."""

    train_min: int
    train_max: int
    eval_min: int
    eval_max: int
    eval_bins: int
    description: str


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(3, 40, 40, 256, 8, "arXiv 2411.12537 parity / arithmetic: train 3-40, test 40-256"),
    "chomsky": Protocol(1, 40, 41, 500, 9, "Deletang et al. regular tasks: train 1-40, test 41-500"),
    "word128": Protocol(128, 128, 512, 512, 1, "group word problems (DeltaProduct): train 128, test 512"),
    "word32": Protocol(32, 32, 512, 512, 1, "group word problems (arXiv 2411.12537 S5): train 32, test 512"),
}
"""Named length protocols; ``RunConfig.with_protocol(name)`` applies one."""

PRECISIONS = ("float32", "bfloat16")
"""Training precisions: float32, or bfloat16 autocast over float32 weights, gradients and optimiser state."""

RESULT_NEUTRAL_FIELDS = ("log_every", "checkpoint_every", "eval_every", "eval_batch_size", "device")
"""Run-config fields that change neither a run's weights nor its result (what it logs, when it checkpoints
and evaluates, how many sequences one evaluation forward takes, and -- up to floating-point rounding --
the device): runs differing only in them are the same run. An interrupted run may resume with other
values, and a sweep may reuse a finished one."""


def config_differences(first: dict[str, Any], second: dict[str, Any],
                       ignore: tuple[str, ...] = RESULT_NEUTRAL_FIELDS) -> dict[str, tuple[Any, Any]]:
    """``{field: (first's value, second's value)}`` for every field outside ``ignore`` where two run configs
    (dicts as in config.json) differ; a field that only one of them has is paired with ``"<missing>"``."""
    missing = "<missing>"
    return {name: (first.get(name, missing), second.get(name, missing))
            for name in sorted((set(first) | set(second)) - set(ignore))
            if first.get(name, missing) != second.get(name, missing)}

@dataclass
class RunConfig(JsonConfig):
    """Everything that determines one training run (and, with the seed, its exact result).

    Model: ``mixer`` (a name in ``lrnn.layers.MIXERS``; "attention" is the Transformer baseline),
    ``negative_eigenvalues`` (the [-1, 1] switch; only for mixers that have it), ``n_layers``, ``d_model``,
    ``d_intermediate`` (MLP width after each mixer, 0: none), and the generic size fields, each None for
    the mixer's own default and an error on a mixer that does not take it (``MixerSpec.fields`` says which
    do): ``heads`` (Mamba-2: ``headdim = expand * d_model / heads``), ``n_h`` (Householder steps per
    token of the DeltaNet family), ``d_state`` (Mamba / Mamba-2 / S4D state size), ``chunk_size``
    (chunked-scan block length). ``mixer_kwargs``: further constructor arguments; one that contradicts a
    generic field (``heads=4`` with ``mixer_kwargs={"headdim": 16}`` at a width that gives 32) is an error.

    Optimisation: AdamW with ``lr``, ``weight_decay`` (not on norms, biases or parameters flagged
    ``_no_weight_decay``), ``betas``; linear warm-up over ``warmup_fraction * steps`` steps, then a
    cosine from ``lr`` down to ``min_lr``; gradients clipped to global norm ``grad_clip`` (0: off).
    ``ssm_lr``: the peak learning rate of S4D's SSM parameters (A, B, dt; flagged ``_ssm_param``), which
    get no weight decay and follow the same schedule scaled by ``ssm_lr / lr`` (None: the same lr as
    the rest; models without S4D layers are unaffected).

    Data: lengths uniform in [train_min, train_max]; ``batch_size`` fresh sequences per step.

    Evaluation: on ``eval_task`` (None: the task's held-out split ``Task.test_split`` if it has one, e.g.
    sequential_digits -> sequential_digits_test, else the training task), in ``eval_bins`` equal-width
    length bins over [eval_min, eval_max], every ``eval_every`` steps (0: only at the end) and at the end,
    ``eval_batch_size`` sequences per forward. A task with a fixed split (``Task.fixed_items``) is scored
    on every item once; otherwise ``eval_samples`` sequences per bin are drawn from a generator seeded
    with ``eval_seed`` (the same set every time).

    Bookkeeping: ``log_every`` steps per JSONL line, ``checkpoint_every`` steps per checkpoint
    (0: only at the end), ``seed`` (model init and data), ``device``.
    """

    task: str = "parity"
    mixer: str = "deltanet"
    negative_eigenvalues: bool = False
    n_layers: int = 2
    d_model: int = 128
    heads: int | None = None
    n_h: int | None = None
    d_state: int | None = None
    d_intermediate: int = 0
    chunk_size: int | None = None
    mixer_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.1
    ssm_lr: float | None = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    steps: int = 1000
    batch_size: int = 64
    train_min: int = 3
    train_max: int = 40
    eval_task: str | None = None
    eval_min: int = 40
    eval_max: int = 256
    eval_bins: int = 8
    eval_samples: int = 256
    eval_batch_size: int = 256
    eval_every: int = 0
    eval_seed: int = 1234
    log_every: int = 10
    checkpoint_every: int = 0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list
        self.validate()

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError / TypeError naming the first bad field, its expected range and its value."""
        if not isinstance(self.task, str) or not self.task:
            raise TypeError(f"task must be a task name, got {self.task!r}")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {self.mixer!r}")
        check_flag("negative_eigenvalues", self.negative_eigenvalues)
        for name in ("n_layers", "d_model", "steps", "batch_size",
                     "train_min", "train_max", "eval_min", "eval_max", "eval_bins", "eval_samples",
                     "eval_batch_size", "log_every"):
            check_int(name, getattr(self, name), 1)
        for name in ("d_intermediate", "eval_every", "checkpoint_every", "seed", "eval_seed"):
            check_int(name, getattr(self, name), 0)
        for name in GENERIC_FIELDS:
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        for name in ("lr", "min_lr", "weight_decay", "warmup_fraction", "grad_clip"):
            check_number(name, getattr(self, name), 0)
        if self.ssm_lr is not None:
            check_number("ssm_lr (None: the same lr as the rest)", self.ssm_lr, 0, strict=True)
        if self.eval_task is not None and (not isinstance(self.eval_task, str) or not self.eval_task):
            raise TypeError(f"eval_task must be a task name or None (the task's test split), got {self.eval_task!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be <= lr = {self.lr}, got {self.min_lr}")
        if self.warmup_fraction > 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1], got {self.warmup_fraction}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.train_max < self.train_min:
            raise ValueError(f"train_max must be >= train_min = {self.train_min}, got {self.train_max}")
        if self.eval_max < self.eval_min:
            raise ValueError(f"eval_max must be >= eval_min = {self.eval_min}, got {self.eval_max}")
        if self.eval_bins > self.eval_max - self.eval_min + 1:
            raise ValueError(f"eval_bins must be <= the number of test lengths "
                             f"({self.eval_max - self.eval_min + 1}), got {self.eval_bins}")
        if not isinstance(self.mixer_kwargs, dict):
            raise TypeError(f"mixer_kwargs must be a dict of constructor arguments, got {self.mixer_kwargs!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        mixer_spec(self.mixer).check_eigenvalue_switch(self.negative_eigenvalues)
        self.mixer_arguments()  # a generic field the mixer lacks, or one mixer_kwargs contradicts, raises

    # ---- model ---------------------------------------------------------------------------------
    def mixer_arguments(self) -> dict[str, Any]:
        """Constructor arguments of the mixer: the generic fields mapped by its registry entry, then
        ``mixer_kwargs`` (a contradiction between the two raises)."""
        generic = {name: getattr(self, name) for name in GENERIC_FIELDS}
        return mixer_spec(self.mixer).arguments(self.d_model, generic, self.mixer_kwargs)

    def model_config(self, vocab_size: int, num_classes: int) -> ModelConfig:
        """The token-classification ``ModelConfig`` of this run for a task's vocabulary and classes."""
        return ModelConfig(vocab_size=vocab_size, d_model=self.d_model, n_layers=self.n_layers, mixer=self.mixer,
                           negative_eigenvalues=self.negative_eigenvalues,
                           mixer_kwargs={self.mixer: self.mixer_arguments()},
                           d_intermediate=self.d_intermediate, num_labels=num_classes)

    @property
    def eigenvalue_range(self) -> str:
        """"[-1, 1]" or "[0, 1]" for mixers with the eigenvalue switch, "-" for the others."""
        if not mixer_spec(self.mixer).eigenvalue_switch:
            return "-"
        return "[-1, 1]" if self.negative_eigenvalues else "[0, 1]"

    @property
    def model_label(self) -> str:
        """Human name of the model, e.g. "DeltaProduct n_h=2" or "S4D-LegS" (a row of the report)."""
        return mixer_spec(self.mixer).display_label(self.mixer_arguments())

    def with_protocol(self, name: str) -> "RunConfig":
        """A copy with the train / test ranges of ``PROTOCOLS[name]``."""
        if name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
        p = PROTOCOLS[name]
        return dataclasses.replace(self, train_min=p.train_min, train_max=p.train_max, eval_min=p.eval_min,
                                   eval_max=p.eval_max, eval_bins=p.eval_bins)

    # ---- JSON (from_dict / save / load come from JsonConfig) --------------------------------------
    config_kind = "run config"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data
