"""Weight formats for CPU inference: what a decode step reads, and how it multiplies.

A cached decode step multiplies one token's activations by every weight matrix of the model, so on a CPU
its time is the time to stream the weights from memory: bytes read / read bandwidth. Two levers:

* **layout** (``"float32"``, exact): the weight is stored transposed, ``[in, out]`` contiguous, and a
  step computes ``x @ W^T`` as a vector-matrix product over rows of ``W^T``; with PyTorch's CPU BLAS this
  streams the matrix faster than ``F.linear``'s ``[out, in]`` layout at one row (measured by
  ``lrnn bench decode --weights``). The products are the same up to float32 summation order.
* **fewer bytes** (``"bfloat16"``: 2 bytes per weight; ``"int8"``: 1 byte per weight plus one scale per
  output channel, ``W ~= scale[o] * q[o, i]`` with ``scale[o] = max_i |W[o, i]| / 127``): a numerically
  different model, with the activations rounded to bfloat16 at each product (the fast CPU kernels for
  these weights take bfloat16 inputs). Their cost in accuracy is measured, not assumed: logit error and
  greedy agreement with the float32 model (``lrnn bench decode --weights``, docs/benchmarks.md).

``prepare_for_inference(model, weights)`` swaps every ``nn.Linear`` of a model (mixer projections, MLPs,
the LM head -- a tied head gets its own copy; the embedding lookup reads one row per token and stays as
it is) for an ``InferenceLinear`` holding the weight in that format. The result is for inference only:
its weights are buffers, not parameters (no gradients), and ``save_pretrained`` refuses it (save the
original model; conversion is cheap and deterministic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")
"""``weights`` values of ``prepare_for_inference``."""

_INT8_MAX = 127
_INT8_KERNEL_WIDTH = 16  # torch._weight_int8pack_mm needs in_features % 16 == 0


def check_weight_format(weights: object) -> str:
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {list(WEIGHT_FORMATS)}, got {weights!r}")
    return weights  # type: ignore[return-value]


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``weight [out, in] ~= scale[:, None] * q`` with q in [-127, 127].

    Returns ``(q [out, in] int8, scale [out] float32)``; a zero row gets scale 1 (q = 0), so nothing divides
    by zero."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1) / _INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(weight / scale[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return q, scale


def _int8_matmul(rows: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``rows [M, in] @ (scale[:, None] * q)^T`` -> [M, out], rows and scale in bfloat16.

    PyTorch's CPU weight-only int8 kernel (``torch._weight_int8pack_mm``: reads the int8 weight, scales each
    output, bfloat16 in and out) when the build has it and ``in`` is a multiple of 16 (with other widths it
    returns wrong values or crashes, as tried on torch 2.13); else the same product with the weight
    dequantised (slower, same values up to rounding)."""
    kernel = getattr(torch, "_weight_int8pack_mm", None)
    if kernel is not None and rows.device.type == "cpu" and rows.shape[-1] % _INT8_KERNEL_WIDTH == 0:
        return kernel(rows, q, scale)
    return F.linear(rows, q.to(rows.dtype)) * scale


class InferenceLinear(nn.Module):
    """An ``nn.Linear`` for inference with its weight in one of ``WEIGHT_FORMATS``: [..., in] -> [..., out],
    the output in the input's dtype (float32 models; float64 inputs are refused by the reduced formats)."""

    def __init__(self, linear: nn.Linear, weights: str) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        self.weights = check_weight_format(weights)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if weights == "float32":
            self.register_buffer("weight_t", weight.float().t().contiguous())  # [in, out]
        elif weights == "bfloat16":
            self.register_buffer("weight", weight.to(torch.bfloat16).contiguous())  # [out, in]
        else:
            q, scale = quantize_int8(weight)
            self.register_buffer("weight_q", q)  # [out, in]
            self.register_buffer("scale", scale.to(torch.bfloat16))  # [out], in the kernel's dtype
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.weights == "float32":
            y = rows.float() @ self.weight_t
        elif self.weights == "bfloat16":
            rows = rows.to(torch.bfloat16)
            # One row (a decode step): a matrix-vector product over the [out, in] weight streams it fastest.
            y = torch.mv(self.weight, rows[0])[None] if rows.shape[0] == 1 else F.linear(rows, self.weight)
        else:
            y = _int8_matmul(rows.to(torch.bfloat16), self.weight_q, self.scale)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def weight_bytes(self) -> int:
        """Bytes a forward pass reads from this layer's weight (and scales)."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "bias")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.weights}"


def prepare_for_inference(model: nn.Module, weights: str = "float32") -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` for an ``InferenceLinear`` in the ``weights`` format, in place;
    returns the model (in eval mode). A model already prepared is refused (prepare the original)."""
    check_weight_format(weights)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if is_prepared(model):
        raise ValueError("model is already prepared for inference; prepare the original model instead")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                dtype = child.weight.dtype
                if dtype != torch.float32:
                    raise ValueError(f"prepare_for_inference expects float32 weights, got {dtype} in {name!r}")
                setattr(parent, name, InferenceLinear(child, weights))
    return model.eval()


def is_prepared(model: nn.Module) -> bool:
    """Whether ``model`` holds ``InferenceLinear`` layers (``prepare_for_inference`` ran on it)."""
    return any(isinstance(m, InferenceLinear) for m in model.modules())


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every matrix of the model but the embedding table (a lookup
    reads one row of it). The head counts once even when tied to the embedding."""
    total = 0
    for module in model.modules():
        if isinstance(module, InferenceLinear):
            total += module.weight_bytes()
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif not isinstance(module, nn.Embedding):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return total


def compile_for_decoding(model: nn.Module, dynamic: bool = True) -> nn.Module:
    """``torch.compile`` the two passes cached and speculative decoding run per step, in place: the
    ordinary forward (prefill, decode steps, chunked chain verification, replays) and ``forward_tree``
    (tree and selecting-chain verification). What runs once per step around them -- drafting, the
    verification rule, ``commit_tree_path`` -- stays eager. Returns ``model``.

    At decoding sizes on a CPU a pass is bound by the number of small ops, which the compiler fuses; a
    verification pass over several tokens has more of them to fuse than a decode step, so compiling pays
    speculative decoding more than autoregressive decoding (measured by ``lrnn bench speculative
    --compile``). ``dynamic=True`` traces the token and node counts as symbols, so the cache length and the
    draft length do not each compile anew; but every draft shape the compiler has to guard on (a chain of
    n nodes, a tree's depth and shape) is a compilation of its own, minutes on a CPU the first time, and
    beyond ``torch._dynamo.config.cache_size_limit`` of them the pass runs eagerly. Warm up on the shapes
    you will decode.
    """
    if not callable(getattr(model, "forward_tree", None)):
        raise TypeError(f"model must be a LanguageModel (with forward_tree), got {type(model).__name__}")
    model.forward = torch.compile(model.forward, dynamic=dynamic)
    model.forward_tree = torch.compile(model.forward_tree, dynamic=dynamic)
    return model
