"""Benchmark cases: one op at one shape, with its random inputs, its call and its FLOP count.

FLOP counts
-----------
Every count is the number of matmul FLOPs (a multiply-add counts as 2) of the *chunked* algorithm, with
chunks of ``C = min(chunk_size, steps)`` steps and ``N = ceil(steps / C)`` chunks per (batch, head).
Element-wise work (decays, masks, exponentials) is not counted. The same count is used for
``mode="recurrent"``, so the GFLOP/s of both modes are comparable: they are "chunked-equivalent" rates
(equal times give equal GFLOP/s), not the arithmetic the recurrent loop really performs.

* delta rule, per chunk and head, keys K, values V (DeltaProduct: the flattened sequence of
  ``num_householder * T`` sub-steps is chunked, so ``steps = num_householder * T``)::

      K K^T          2 C^2 K
      Q K^T          2 C^2 K
      (I + A)^-1 [.] C^2 (K + V)     unit lower-triangular solve, right-hand side [beta V, beta K]
      W S            2 C K V
      K^T U          2 C K V
      Q S            2 C K V
      (Q K^T) U      2 C^2 V
      total          C^2 (5K + 3V) + 6 C K V

* decay recurrence, per chunk and head (the same count for scalar and per-channel decays)::

      Q K^T          2 C^2 K
      scores @ V     2 C^2 V
      K^T V          2 C K V          the chunk's contribution to its end state
      Q S            2 C K V          the inter-chunk output
      total          2 C^2 (K + V) + 4 C K V

* short conv (a depthwise convolution, no matmul): ``2 W`` FLOPs per channel and token.

Backward is counted as twice the forward, so forward+backward = 3x the forward count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lrnn.ops import decay_recurrence, delta_rule, short_conv

__all__ = [
    "Case", "DeltaRuleCase", "DecayRecurrenceCase", "ShortConvCase", "BACKWARD_FLOP_FACTOR",
    "FLOP_DEFINITIONS", "default_cases", "quick_cases", "case_by_name", "select_cases",
    "delta_rule_flops", "decay_recurrence_flops", "short_conv_flops", "as_leaves", "grad_output",
    "forward_backward",
]

#: forward+backward FLOPs = BACKWARD_FLOP_FACTOR * forward FLOPs (backward counted as 2x forward).
BACKWARD_FLOP_FACTOR = 3

#: One line per op, printed under the results so a pasted table carries its own definitions.
FLOP_DEFINITIONS = {
    "delta_rule": "per chunk of C steps and head: K K^T 2C^2K + Q K^T 2C^2K + triangular solve C^2(K+V) "
                  "+ W S 2CKV + K^T U 2CKV + Q S 2CKV + (QK^T) U 2C^2V = C^2(5K+3V) + 6CKV; "
                  "DeltaProduct chunks the num_householder*T sub-steps",
    "decay_recurrence": "per chunk of C steps and head: Q K^T 2C^2K + scores V 2C^2V + state contribution "
                        "2CKV + inter-chunk output 2CKV = 2C^2(K+V) + 4CKV (scalar and per-channel decays alike)",
    "short_conv": "2W per channel and token (depthwise, no matmul)",
}


def _chunks(steps: int, chunk_size: int) -> tuple[int, int]:
    """(C, N): the chunk length the ops use, ``min(chunk_size, steps)``, and the number of chunks."""
    c = min(chunk_size, steps)
    return c, math.ceil(steps / c)


def delta_rule_flops(batch: int, heads: int, steps: int, key: int, value: int, chunk_size: int) -> int:
    """Forward matmul FLOPs of the chunked (UT-form) delta rule over ``steps`` steps."""
    c, n = _chunks(steps, chunk_size)
    per_chunk = (2 * c * c * key          # K K^T
                 + 2 * c * c * key        # Q K^T
                 + c * c * (key + value)  # unit lower-triangular solve, right-hand side [beta V, beta K]
                 + 2 * c * key * value    # W S   (the start state's effect on U)
                 + 2 * c * key * value    # K^T U (the chunk's state update)
                 + 2 * c * key * value    # Q S   (the inter-chunk output)
                 + 2 * c * c * value)     # (Q K^T) U (the intra-chunk output)
    return batch * heads * n * per_chunk


def decay_recurrence_flops(batch: int, heads: int, steps: int, key: int, value: int, chunk_size: int) -> int:
    """Forward matmul FLOPs of the chunked decay recurrence over ``steps`` steps."""
    c, n = _chunks(steps, chunk_size)
    per_chunk = (2 * c * c * key         # Q K^T
                 + 2 * c * c * value     # scores @ V
                 + 2 * c * key * value   # K^T V: the chunk's contribution to its end state
                 + 2 * c * key * value)  # Q S: the inter-chunk output
    return batch * heads * n * per_chunk


def short_conv_flops(batch: int, steps: int, channels: int, width: int) -> int:
    """Forward FLOPs of a depthwise causal convolution: a multiply-add per tap, channel and token."""
    return 2 * width * batch * steps * channels


# ----------------------------------------------------------------------------------------------------
# Random inputs. Drawn on the CPU from a seeded generator, then moved, so every device sees the same data.


def _normal(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


def _unit(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Gaussian vectors L2-normalised along the last dim (the delta rule's keys and queries)."""
    return F.normalize(_normal(shape, gen), dim=-1)


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _signed_decay(shape: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Decays ``a ~ U[-1, 1]`` in the ops' log-space form: ``(log|a|, a < 0)``."""
    a = _uniform(shape, -1.0, 1.0, gen)
    return torch.log(a.abs()), a < 0


def _place(tensors: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Move to ``device``; floating tensors take ``dtype``, bool masks stay bool."""
    return {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            for name, t in tensors.items()}


def as_leaves(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies-by-reference of the inputs; floating ones require grad (bool masks do not)."""
    return {name: t.detach().requires_grad_(t.is_floating_point()) for name, t in inputs.items()}


def grad_output(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """A fixed random upstream gradient for ``out.backward``."""
    return _normal(shape, torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One op at one shape. ``shape`` maps dimension letters (B, T, H, K, V, D, W) to sizes.

    Subclasses implement ``make_inputs``, ``run``, ``flops``, ``output_shape`` and ``steps``.
    """

    name: str
    op: str
    description: str
    shape: Mapping[str, int]

    def with_shape(self, **dims: int) -> Case:
        """A copy with some dimensions replaced; names the case does not use are ignored."""
        merged = {key: int(dims.get(key, size)) for key, size in self.shape.items()}
        return dataclasses.replace(self, shape=merged)

    @property
    def tokens(self) -> int:
        """Sequence length in tokens (T)."""
        return self.shape["T"]

    def shape_label(self) -> str:
        """E.g. ``"B4 T2048 H16 K128 V128"``."""
        return " ".join(f"{key}{size}" for key, size in self.shape.items())

    def steps(self) -> int:
        """Recurrence steps along time (tokens times sub-steps per token)."""
        return self.tokens

    def make_inputs(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def run(self, inputs: Mapping[str, torch.Tensor], mode: str, chunk_size: int) -> torch.Tensor:
        raise NotImplementedError

    def flops(self, chunk_size: int) -> int:
        """Forward FLOPs (see the module docstring); the same number for every mode."""
        raise NotImplementedError

    def output_shape(self) -> tuple[int, ...]:
        raise NotImplementedError


def forward_backward(case: Case, leaves: Mapping[str, torch.Tensor], grad: torch.Tensor, mode: str,
                     chunk_size: int) -> None:
    """One training step of the op: forward, then backward into the leaves' ``.grad`` (reset first)."""
    for t in leaves.values():
        t.grad = None
    case.run(leaves, mode, chunk_size).backward(grad)


@dataclasses.dataclass(frozen=True)
class DeltaRuleCase(Case):
    """``delta_rule``: q, k unit vectors, betas ~ U[0, 2], optional signed gate a ~ U[-1, 1]."""

    gated: bool = False
    num_householder: int = 1

    def steps(self) -> int:
        return self.num_householder * self.tokens

    def make_inputs(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
        b, t, h, dk, dv = (self.shape[key] for key in "BTHKV")
        n = self.steps()
        gen = torch.Generator().manual_seed(seed)
        inputs = {
            "q": _unit((b, t, h, dk), gen),
            "k": _unit((b, n, h, dk), gen),
            "v": _normal((b, n, h, dv), gen),
            "beta": _uniform((b, n, h), 0.0, 2.0, gen),
        }
        if self.gated:
            inputs["log_decay"], inputs["decay_negative"] = _signed_decay((b, t, h), gen)
        return _place(inputs, device, dtype)

    def run(self, inputs: Mapping[str, torch.Tensor], mode: str, chunk_size: int) -> torch.Tensor:
        out, _ = delta_rule(inputs["q"], inputs["k"], inputs["v"], inputs["beta"],
                            inputs.get("log_decay"), inputs.get("decay_negative"),
                            num_householder=self.num_householder, mode=mode, chunk_size=chunk_size)
        return out

    def flops(self, chunk_size: int) -> int:
        return delta_rule_flops(self.shape["B"], self.shape["H"], self.steps(), self.shape["K"],
                                self.shape["V"], chunk_size)

    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[key] for key in "BTHV")


@dataclasses.dataclass(frozen=True)
class DecayRecurrenceCase(Case):
    """``decay_recurrence``: Gaussian q, k, v; signed decays a ~ U[-1, 1], per head or per key channel."""

    per_channel: bool = False

    def make_inputs(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
        b, t, h, dk, dv = (self.shape[key] for key in "BTHKV")
        gen = torch.Generator().manual_seed(seed)
        decay_shape = (b, t, h, dk) if self.per_channel else (b, t, h)
        inputs = {
            "q": _normal((b, t, h, dk), gen),
            "k": _normal((b, t, h, dk), gen),
            "v": _normal((b, t, h, dv), gen),
        }
        inputs["log_decay"], inputs["decay_negative"] = _signed_decay(decay_shape, gen)
        return _place(inputs, device, dtype)

    def run(self, inputs: Mapping[str, torch.Tensor], mode: str, chunk_size: int) -> torch.Tensor:
        out, _ = decay_recurrence(inputs["q"], inputs["k"], inputs["v"], inputs["log_decay"],
                                  inputs["decay_negative"], mode=mode, chunk_size=chunk_size)
        return out

    def flops(self, chunk_size: int) -> int:
        return decay_recurrence_flops(self.shape["B"], self.shape["H"], self.steps(), self.shape["K"],
                                      self.shape["V"], chunk_size)

    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[key] for key in "BTHV")


@dataclasses.dataclass(frozen=True)
class ShortConvCase(Case):
    """``short_conv`` with bias and SiLU: x [B, T, D], weight [D, W]."""

    def make_inputs(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
        b, t, d, w = (self.shape[key] for key in "BTDW")
        gen = torch.Generator().manual_seed(seed)
        inputs = {
            "x": _normal((b, t, d), gen),
            "weight": _normal((d, w), gen) / math.sqrt(w),
            "bias": _normal((d,), gen),
        }
        return _place(inputs, device, dtype)

    def run(self, inputs: Mapping[str, torch.Tensor], mode: str, chunk_size: int) -> torch.Tensor:
        out, _ = short_conv(inputs["x"], inputs["weight"], inputs["bias"], activation="silu", mode=mode)
        return out

    def flops(self, chunk_size: int) -> int:
        return short_conv_flops(self.shape["B"], self.tokens, self.shape["D"], self.shape["W"])

    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[key] for key in "BTD")


# ----------------------------------------------------------------------------------------------------
# Registries


def default_cases() -> list[Case]:
    """The issue's shapes: DeltaNet-size delta rules and Mamba-2-like decay recurrences."""
    delta = {"B": 4, "T": 2048, "H": 16, "K": 128, "V": 128}
    return [
        DeltaRuleCase("delta", "delta_rule", "DeltaNet: ungated, beta ~ U[0,2]", delta),
        DeltaRuleCase("gated_delta", "delta_rule", "Gated DeltaNet: gate a ~ U[-1,1], beta ~ U[0,2]",
                      delta, gated=True),
        DeltaRuleCase("delta_product", "delta_rule",
                      "Gated DeltaProduct: num_householder=2 (T tokens = 2T sub-steps), a ~ U[-1,1], "
                      "beta ~ U[0,2]", delta, gated=True, num_householder=2),
        DecayRecurrenceCase("mamba2", "decay_recurrence",
                            "Mamba-2-like: one decay per head a ~ U[-1,1], d_state K, headdim V",
                            {"B": 4, "T": 2048, "H": 16, "K": 128, "V": 64}),
        DecayRecurrenceCase("gla", "decay_recurrence", "GLA-like: one decay per key channel a ~ U[-1,1]",
                            {"B": 4, "T": 2048, "H": 8, "K": 128, "V": 128}, per_channel=True),
        ShortConvCase("short_conv", "short_conv", "depthwise causal conv, bias + SiLU",
                      {"B": 4, "T": 2048, "D": 2048, "W": 4}),
    ]


def quick_cases() -> list[Case]:
    """Tiny versions of the default cases, for a smoke test that runs in seconds."""
    tiny = {"B": 1, "T": 64, "H": 2, "K": 16, "V": 16, "D": 32}
    return [case.with_shape(**tiny) for case in default_cases()]


def case_by_name(name: str, quick: bool = False) -> Case:
    """Look a case up by name in the default (or quick) registry."""
    for case in quick_cases() if quick else default_cases():
        if case.name == name:
            return case
    raise KeyError(f"unknown benchmark case {name!r}")


def select_cases(cases: list[Case], names: list[str] | None) -> list[Case]:
    """Keep the cases whose case name or op name is in ``names`` (None keeps all)."""
    if not names:
        return cases
    known = {case.name for case in cases} | {case.op for case in cases}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown op or case name(s) {unknown}; choose from {sorted(known)}")
    return [case for case in cases if case.name in names or case.op in names]
