"""The run configuration: one dataclass that names a task, a model and a training budget.

``RunConfig`` round-trips through JSON (``to_dict`` / ``from_dict`` / ``save`` / ``load``) and builds
the ``ModelConfig`` of its model for a given task (``model_config(task)``). ``PROTOCOLS`` holds the
train / test length ranges of the published benchmarks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lrnn.layers import MIXERS, RECURRENT_MIXERS
from lrnn.models import ModelConfig
from lrnn.models.config import JsonConfig, check_int


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

S4D_INIT_LABELS = {"legs": "LegS", "lin": "Lin", "inv": "Inv", "real": "Real", "ptd": "PTD"}
"""S4D init name (``mixer_kwargs["init"]``) -> the suffix of its model label, "S4D-LegS" etc."""


@dataclass
class RunConfig(JsonConfig):
    """Everything that determines one training run (and, with the seed, its exact result).

    Model: ``mixer`` (a name in ``lrnn.layers.MIXERS``; "attention" is the Transformer baseline),
    ``negative_eigenvalues`` (the [-1, 1] switch), ``n_layers``, ``d_model``, ``heads`` (heads of
    DeltaNet-family and attention mixers; Mamba-2 uses ``headdim = expand * d_model / heads``),
    ``n_h`` (Householder steps per token of DeltaProduct), ``d_state`` (Mamba / Mamba-2 / S4D state size,
    None: the mixer's default), ``d_intermediate`` (MLP width after each mixer, 0: none),
    ``chunk_size`` (chunked-scan block length), ``mixer_kwargs`` (extra constructor arguments, win
    over everything derived above).

    Optimisation: AdamW with ``lr``, ``weight_decay`` (not on norms, biases or parameters flagged
    ``_no_weight_decay``), ``betas``; linear warm-up over ``warmup_fraction * steps`` steps, then a
    cosine from ``lr`` down to ``min_lr``; gradients clipped to global norm ``grad_clip`` (0: off).
    ``ssm_lr``: the peak learning rate of S4D's SSM parameters (A, B, dt; flagged ``_ssm_param``), which
    get no weight decay and follow the same schedule scaled by ``ssm_lr / lr`` (None: the same lr as
    the rest; models without S4D layers are unaffected).

    Data: lengths uniform in [train_min, train_max]; ``batch_size`` fresh sequences per step.

    Evaluation: on ``eval_task`` (None: the task's held-out split ``Task.test_split`` if it has one, e.g.
    sequential_digits -> sequential_digits_test, else the training task), ``eval_bins`` equal-width
    length bins over [eval_min, eval_max], ``eval_samples`` sequences per bin drawn from a generator seeded with ``eval_seed`` (the same set every time),
    every ``eval_every`` steps (0: only at the end) and at the end; ``eval_batch_size`` per forward.

    Bookkeeping: ``log_every`` steps per JSONL line, ``checkpoint_every`` steps per checkpoint
    (0: only at the end), ``seed`` (model init and data), ``device``.
    """

    task: str = "parity"
    mixer: str = "deltanet"
    negative_eigenvalues: bool = True
    n_layers: int = 2
    d_model: int = 128
    heads: int = 4
    n_h: int = 1
    d_state: int | None = None
    d_intermediate: int = 0
    chunk_size: int = 64
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
        if not isinstance(self.negative_eigenvalues, bool):
            raise TypeError(f"negative_eigenvalues must be a bool, got {self.negative_eigenvalues!r}")
        for name in ("n_layers", "d_model", "heads", "n_h", "chunk_size", "steps", "batch_size",
                     "train_min", "train_max", "eval_min", "eval_max", "eval_bins", "eval_samples",
                     "eval_batch_size", "log_every"):
            check_int(name, getattr(self, name), 1)
        for name in ("d_intermediate", "eval_every", "checkpoint_every", "seed", "eval_seed"):
            check_int(name, getattr(self, name), 0)
        if self.d_state is not None:
            check_int("d_state", self.d_state, 1)
        for name in ("lr", "min_lr", "weight_decay", "warmup_fraction", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.ssm_lr is not None and (isinstance(self.ssm_lr, bool) or not isinstance(self.ssm_lr, (int, float))
                                        or not self.ssm_lr > 0):
            raise ValueError(f"ssm_lr must be a number > 0 or None (the same lr as the rest), got {self.ssm_lr!r}")
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

    # ---- model ---------------------------------------------------------------------------------
    def mixer_arguments(self) -> dict[str, Any]:
        """Constructor arguments of the mixer, derived from the generic fields, then ``mixer_kwargs``."""
        kwargs: dict[str, Any] = {}
        if self.mixer in ("deltanet", "gated_deltanet", "deltaproduct", "attention"):
            kwargs["num_heads"] = self.heads
        if self.mixer == "deltaproduct" or (self.mixer in ("deltanet", "gated_deltanet") and self.n_h > 1):
            kwargs["num_householder"] = self.n_h
        if self.mixer == "mamba2":
            inner = 2 * self.d_model  # Mamba-2's default expand = 2
            if inner % self.heads:
                raise ValueError(f"heads must divide 2 * d_model = {inner} for mamba2, got {self.heads}")
            kwargs["headdim"] = inner // self.heads
        if self.mixer in ("mamba", "mamba2", "s4d") and self.d_state is not None:
            kwargs["d_state"] = self.d_state
        if self.mixer in RECURRENT_MIXERS:
            kwargs["chunk_size"] = self.chunk_size
        kwargs.update(self.mixer_kwargs)
        return kwargs

    def model_config(self, vocab_size: int, num_classes: int) -> ModelConfig:
        """The token-classification ``ModelConfig`` of this run for a task's vocabulary and classes."""
        return ModelConfig(vocab_size=vocab_size, d_model=self.d_model, n_layers=self.n_layers, mixer=self.mixer,
                           negative_eigenvalues=self.negative_eigenvalues,
                           mixer_kwargs={self.mixer: self.mixer_arguments()},
                           d_intermediate=self.d_intermediate, num_labels=num_classes)

    @property
    def eigenvalue_range(self) -> str:
        """"[-1, 1]" or "[0, 1]" for recurrent mixers, "-" for attention / LSTM."""
        if self.mixer not in RECURRENT_MIXERS:
            return "-"
        return "[-1, 1]" if self.negative_eigenvalues else "[0, 1]"

    @property
    def model_label(self) -> str:
        """Human name of the model, e.g. "DeltaProduct n_h=2" or "S4D-LegS" (a row of the report)."""
        names = {"mamba": "Mamba", "mamba2": "Mamba-2", "deltanet": "DeltaNet", "gated_deltanet": "Gated DeltaNet",
                 "deltaproduct": "DeltaProduct", "attention": "Transformer", "lstm": "LSTM"}
        label = names.get(self.mixer, self.mixer)
        if self.mixer == "s4d":  # one row per init: "S4D-LegS", "S4D-PTD", ...
            init = self.mixer_arguments().get("init", "legs")
            return f"S4D-{S4D_INIT_LABELS.get(init, init)}"
        return f"{label} n_h={self.n_h}" if self.mixer == "deltaproduct" else label

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
