"""Cached decoding and prefill speed of 130M-shaped models on the current device, against its read bandwidth.

For each model, weight format and context length L: prefill L tokens (chunked), then time ``--new-tokens``
single-token steps from that cache. A recurrent model's per-token time must not depend on L; the ratio of
the per-token times at the longest and shortest context is printed to show it. A decode step reads every
weight once (and the recurrent state twice), so its ceiling is the device's read bandwidth, measured in the
same run (``lrnn.timing.measure_read_bandwidth``): each row reports the bytes a step reads and the fraction
of that bandwidth it achieves. ``--weights`` compares the model as built with the inference formats of
``lrnn.models.prepare_for_inference`` (float32 transposed layout, bfloat16, int8), and measures what the
reduced formats cost: the logits' relative error against the model as built, and greedy agreement (the
fraction of ``--accuracy-tokens`` greedy tokens of the model as built that the format predicts from the same
prefix). ``--model-dir`` runs a saved lrnn model (e.g. a trained one, where agreement means something)
instead of the random 130M shapes.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from lrnn.atomic import atomic_write_text
from lrnn.models import (WEIGHT_FORMATS, LanguageModel, ModelConfig, decode_weight_bytes,
                         prepare_for_inference)
from lrnn.timing import measure_read_bandwidth, synchronize

VOCAB = 50277  # GPT-NeoX tokenizer size used by mamba2-130m; padded to a multiple of 16 like the original

MODELS = {
    # mamba2-130m: 24 layers, d_model 768, d_state 128, headdim 64, no MLP, tied embeddings.
    "mamba2-130m": lambda neg: ModelConfig(
        vocab_size=VOCAB, d_model=768, n_layers=24, mixer="mamba2", negative_eigenvalues=neg,
        mixer_kwargs={"mamba2": {"d_state": 128, "headdim": 64, "chunk_size": 64}}, d_intermediate=0,
        pad_vocab_size_multiple=16),
    # DeltaNet of similar size: 12 layers of (DeltaNet with 12 heads of 64, gated MLP 2048).
    "deltanet-130m": lambda neg: ModelConfig(
        vocab_size=VOCAB, d_model=768, n_layers=12, mixer="deltanet", negative_eigenvalues=neg,
        mixer_kwargs={"deltanet": {"num_heads": 12, "chunk_size": 64}}, d_intermediate=2048,
        pad_vocab_size_multiple=16),
}


AS_BUILT = "as-built"
"""``--weights`` value of the model as built (``nn.Linear`` layers, float32), the reference of the others."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a saved lrnn model directory to run instead of --models (e.g. a trained model)")
    parser.add_argument("--contexts", nargs="+", type=int, default=[128, 4096],
                        help="prompt lengths to prefill before decoding (default 128 4096)")
    parser.add_argument("--new-tokens", type=int, default=32, help="timed decode steps (default 32)")
    parser.add_argument("--weights", nargs="+", choices=(AS_BUILT, *WEIGHT_FORMATS), default=[AS_BUILT],
                        help=f"weight formats to run: {AS_BUILT} (the model's nn.Linear layers) and the inference "
                             "formats of lrnn.models.prepare_for_inference (default as-built)")
    parser.add_argument("--accuracy-tokens", type=int, default=64,
                        help="greedy tokens over which a format's agreement with the model as built is measured "
                             "(default 64; 0: skip the accuracy columns)")
    parser.add_argument("--bandwidth-mb", type=int, default=512,
                        help="size of the buffer the read bandwidth is measured on (default 512 MB)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's setting, one per core); on a machine "
                             "whose cores are busy, more threads than free cores stall the ops")
    parser.add_argument("--negative-eigenvalues", action="store_true", help="use the [-1, 1] range")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def _bench_one(name: str, model: LanguageModel, context: int, args, device: torch.device) -> dict:
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (args.batch, context), generator=gen).to(device)
    step = model
    if args.compile:
        # Default (automatic) dynamic shapes: with dynamic=False every step's new ``cache.length`` would
        # recompile; this way the second step recompiles once with a symbolic length (in the warm-up).
        step = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        cache = model.new_cache()
        synchronize(device)
        start = time.perf_counter()
        logits = model(prompt, cache=cache, logits_to_keep=1)  # as generate(): the head on the last position only
        synchronize(device)
        prefill_s = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(4):  # warm-up steps (and compilation), then the timed ones
            token = step(token, cache=cache)[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.new_tokens):
            token = step(token, cache=cache)[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        decode_s = time.perf_counter() - start
    # A step reads every weight once and the recurrent state (read, then written); attention's KV cache grows.
    step_bytes = decode_weight_bytes(model) + 2 * cache.nbytes()
    ms = 1e3 * decode_s / args.new_tokens
    return {"model": name, "context": context, "batch": args.batch,
            "prefill_tokens_per_s": args.batch * context / prefill_s,
            "decode_ms_per_token": ms,
            "decode_tokens_per_s": args.batch * args.new_tokens / decode_s,
            "cache_mb": cache.nbytes() / 2**20,
            "step_mb": step_bytes / 1e6,
            "achieved_gb_per_s": step_bytes / (ms / 1e3) / 1e9}


def greedy_agreement(reference: LanguageModel, model: LanguageModel, prompt: torch.Tensor,
                     new_tokens: int) -> dict:
    """How closely ``model`` follows ``reference`` (same vocabulary): the reference decodes ``new_tokens``
    greedy tokens after ``prompt`` [1, L]; both then read prompt + those tokens in one forward pass.

    Returns ``logit_error`` (relative Frobenius error of the logits over every position), ``agreement``
    (fraction of the generated positions where ``model``'s argmax equals the reference's token) and
    ``first_divergence`` (index of the first disagreeing generated token; ``new_tokens`` if none)."""
    with torch.no_grad():
        sequence = prompt
        cache = reference.new_cache()
        logits = reference(sequence, cache=cache, logits_to_keep=1)
        for _ in range(new_tokens):
            token = logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token], dim=1)
            logits = reference(token, cache=cache)
        expected = reference(sequence).float()
        got = model(sequence).float()
    error = ((got - expected).norm() / expected.norm()).item()
    start = prompt.shape[1] - 1  # logits at position i predict token i + 1
    predicted = got[0, start:-1].argmax(-1)
    generated = sequence[0, prompt.shape[1]:]
    same = (predicted == generated).tolist()
    first = same.index(False) if False in same else new_tokens
    return {"logit_error": error, "agreement": sum(same) / max(1, new_tokens), "first_divergence": first}


def _models(args, device: torch.device) -> list[tuple[str, LanguageModel]]:
    if args.model_dir is not None:
        model = LanguageModel.from_pretrained(args.model_dir, dtype=torch.float32)
        return [(args.model_dir.name if args.model_dir.name != "model" else args.model_dir.parent.name,
                 model.to(device).eval())]
    built = []
    for name in args.models:
        torch.manual_seed(0)
        built.append((name, LanguageModel(MODELS[name](args.negative_eigenvalues)).to(device).eval()))
    return built


def _in_format(model: LanguageModel, weights: str) -> LanguageModel:
    return model if weights == AS_BUILT else prepare_for_inference(copy.deepcopy(model), weights)


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    for name, value in (("--new-tokens", args.new_tokens), ("--batch", args.batch),
                        ("--bandwidth-mb", args.bandwidth_mb)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.accuracy_tokens < 0:
        parser.error(f"--accuracy-tokens must be >= 0, got {args.accuracy_tokens}")
    if any(c < 1 for c in args.contexts):
        parser.error(f"--contexts must be >= 1, got {args.contexts}")
    if args.model_dir is not None and not args.model_dir.is_dir():
        parser.error(f"--model-dir must be a model directory, got {args.model_dir}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type != "cpu" and any(w in ("bfloat16", "int8") for w in args.weights):
        parser.error("--weights bfloat16 / int8 are CPU inference formats; use --device cpu")
    bandwidth = measure_read_bandwidth(device, nbytes=args.bandwidth_mb * 10**6)
    print(f"# {command}\n# device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, {args.new_tokens} timed steps, "
          f"eigenvalues {'[-1, 1]' if args.negative_eigenvalues else '[0, 1]'}"
          f"{', compiled step' if args.compile else ''}\n# read bandwidth {bandwidth.gb_per_s:.1f} GB/s "
          f"(best of {', '.join(f'{k} {v:.1f}' for k, v in bandwidth.rates.items())} GB/s over "
          f"{bandwidth.nbytes / 1e6:.0f} MB)\n")
    rows = []
    for name, built in _models(args, device):
        params = sum(p.numel() for p in built.parameters()) / 1e6
        for weights in args.weights:
            model = _in_format(built, weights)
            accuracy = {}
            if weights != AS_BUILT and args.accuracy_tokens:
                prompt = torch.randint(0, built.config.vocab_size, (1, min(args.contexts)),
                                       generator=torch.Generator().manual_seed(1)).to(device)
                accuracy = greedy_agreement(built, model, prompt, args.accuracy_tokens)
            for context in args.contexts:
                row = {**_bench_one(name, model, context, args, device), "weights": weights, "params_m": params,
                       **accuracy}
                row["bandwidth_fraction"] = row["achieved_gb_per_s"] / bandwidth.gb_per_s
                rows.append(row)
                print(f"  {name} ({params:.0f}M) {weights:>9}  context {context:>5}: prefill "
                      f"{row['prefill_tokens_per_s']:8.0f} tok/s, decode {row['decode_tokens_per_s']:6.1f} tok/s "
                      f"({row['decode_ms_per_token']:.1f} ms/token, {row['step_mb']:.0f} MB/step, "
                      f"{row['bandwidth_fraction']:.0%} of read bandwidth)", flush=True)
    print("\n| model | weights | context | prefill tok/s | decode tok/s | ms/token | MB read/step | GB/s | "
          "of read bw | logit rel. error | greedy agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        accuracy = (f"{r['logit_error']:.1e} | {r['agreement']:.0%} ({args.accuracy_tokens} tokens)"
                    if "logit_error" in r else "- | -")
        print(f"| {r['model']} | {r['weights']} | {r['context']} | {r['prefill_tokens_per_s']:.0f} | "
              f"{r['decode_tokens_per_s']:.1f} | {r['decode_ms_per_token']:.1f} | {r['step_mb']:.0f} | "
              f"{r['achieved_gb_per_s']:.1f} | {r['bandwidth_fraction']:.0%} | {accuracy} |")
    for name in dict.fromkeys(r["model"] for r in rows):
        for weights in args.weights:
            per = {r["context"]: r["decode_ms_per_token"] for r in rows if r["model"] == name and r["weights"] == weights}
            if len(per) > 1:
                lo, hi = min(per), max(per)
                print(f"\n{name} {weights}: per-token time at context {hi} / at context {lo} = "
                      f"{per[hi] / per[lo]:.2f} (flat: ~1.0)")
    if args.json:
        record = {"command": command, "read_bandwidth_gb_per_s": bandwidth.gb_per_s,
                  "read_bandwidth_kernels": bandwidth.rates, "threads": torch.get_num_threads(), "rows": rows}
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    return 0
