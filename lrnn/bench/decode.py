"""Cached decoding and prefill speed of 130M-shaped models on the current device.

For each model and context length L: prefill L tokens (chunked), then time ``--new-tokens`` single-token
steps from that cache. A recurrent model's per-token time must not depend on L; the ratio of the
per-token times at the longest and shortest context is printed to show it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lrnn.atomic import atomic_write_text
from lrnn.timing import synchronize
from lrnn.models import LanguageModel, ModelConfig

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[128, 4096],
                        help="prompt lengths to prefill before decoding (default 128 4096)")
    parser.add_argument("--new-tokens", type=int, default=32, help="timed decode steps (default 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's setting, one per core); on a machine "
                             "whose cores are busy, more threads than free cores stall the ops")
    parser.add_argument("--negative-eigenvalues", action="store_true", help="use the [-1, 1] range")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def _bench_one(name: str, model: LanguageModel, context: int, args, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB, (args.batch, context), generator=gen).to(device)
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
    return {"model": name, "context": context, "batch": args.batch,
            "prefill_tokens_per_s": args.batch * context / prefill_s,
            "decode_ms_per_token": 1e3 * decode_s / args.new_tokens,
            "decode_tokens_per_s": args.batch * args.new_tokens / decode_s,
            "cache_mb": cache.nbytes() / 2**20}


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    for name, value in (("--new-tokens", args.new_tokens), ("--batch", args.batch)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if any(c < 1 for c in args.contexts):
        parser.error(f"--contexts must be >= 1, got {args.contexts}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {command}\n# device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"float32, batch {args.batch}, {args.new_tokens} timed steps, "
          f"eigenvalues {'[-1, 1]' if args.negative_eigenvalues else '[0, 1]'}"
          f"{', compiled step' if args.compile else ''}\n")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = LanguageModel(MODELS[name](args.negative_eigenvalues)).to(device).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for context in args.contexts:
            row = _bench_one(name, model, context, args, device)
            row["params_m"] = params
            rows.append(row)
            print(f"  {name} ({params:.0f}M)  context {context:>5}: prefill {row['prefill_tokens_per_s']:8.0f} tok/s, "
                  f"decode {row['decode_tokens_per_s']:6.1f} tok/s ({row['decode_ms_per_token']:.1f} ms/token), "
                  f"cache {row['cache_mb']:.1f} MiB", flush=True)
    print("\n| model | params | context | prefill tok/s | decode tok/s | ms/token | cache MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.0f}M | {r['context']} | {r['prefill_tokens_per_s']:.0f} | "
              f"{r['decode_tokens_per_s']:.1f} | {r['decode_ms_per_token']:.1f} | {r['cache_mb']:.1f} |")
    for name in args.models:
        per = {r["context"]: r["decode_ms_per_token"] for r in rows if r["model"] == name}
        if len(per) > 1:
            lo, hi = min(per), max(per)
            print(f"\n{name}: per-token time at context {hi} / at context {lo} = {per[hi] / per[lo]:.2f} "
                  "(flat: ~1.0)")
    if args.json:
        atomic_write_text(args.json, json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    return 0
