"""CPU decode speed of a 130M-shaped Mamba-2: lrnn vs HF transformers' Mamba2 ``generate``, same weights.

One random lrnn model (24 layers, d_model 768, d_state 128, headdim 64, vocab 50280, tied embeddings)
is exported in memory to HF's format and loaded into ``Mamba2ForCausalLM``; the logits of both are
compared first. Then, for each prompt length, both generate ``--new-tokens`` greedily, each token
timestamped as it is produced (lrnn's ``on_token``, HF's streamer): prefill = time to the first token,
decode tokens/s = (n - 1) / (t_n - t_1). Both run in one process with the same thread count.

``--compile`` adds a third system, "lrnn compiled": lrnn's ``generate`` with a ``torch.compile``d decode
step (compiled during the warm-up, not timed; the prefill stays eager). The memory floor is measured too:
the bytes a decode step reads (every weight once and the cache twice, ``lrnn.models.decode_weight_bytes``)
over the read bandwidth measured in the same run (``lrnn.timing.measure_read_bandwidth``), which bounds any
float32 implementation's per-token time from below. (An earlier version timed ``F.linear`` over the
weights instead and called that the floor: it is the matrix-vector product's time in one layout, not the
memory's; ``lrnn bench decode --weights float32`` beats it.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lrnn.models import LanguageModel, ModelConfig, SamplingConfig, decode_weight_bytes, generate
from lrnn.models.interop import hf as hf_format
from lrnn.models.interop.common import peer_state
from lrnn.testing import relative_error
from lrnn.timing import measure_read_bandwidth

VOCAB = 50280  # GPT-NeoX's 50277 padded to a multiple of 8, as in HF's converted Mamba checkpoints


def lrnn_config() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, d_model=768, n_layers=24, mixer="mamba2", d_intermediate=0,
                       mixer_kwargs={"mamba2": {"d_state": 128, "headdim": 64, "ngroups": 1, "chunk_size": 64}})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contexts", nargs="+", type=int, default=[128, 2048],
                        help="prompt lengths (default 128 2048)")
    parser.add_argument("--new-tokens", type=int, default=128, help="generated tokens per run (default 128)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both systems (default: torch's). On a shared machine use 1: "
                             "with busy cores, every parallel elementwise op waits for a descheduled thread")
    parser.add_argument("--compile", action="store_true",
                        help="also time lrnn with a torch.compile'd decode step (system 'lrnn compiled')")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def hf_twin(model: LanguageModel):
    """HF ``Mamba2ForCausalLM`` holding ``model``'s weights (built in memory, nothing written)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    config = hf_format.from_lrnn_config(model)
    for key in ("architectures", "model_type", "chunk_size"):  # HF keeps its own default chunk length (256)
        config.pop(key)
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**config))
    missing, unexpected = hf.load_state_dict(peer_state(model, hf_format.KEYMAP), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"HF twin does not match: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


class _Clock:
    """Timestamps of generated tokens: lrnn's ``on_token`` callback and HF's streamer (``put``/``end``)."""

    def __init__(self, skip_first_put: bool = False) -> None:
        self.times: list[float] = []
        self._skip = skip_first_put  # HF's streamer receives the prompt first

    def __call__(self, token) -> None:
        self.times.append(time.perf_counter())

    def put(self, value) -> None:
        if self._skip:
            self._skip = False
        else:
            self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


HF_SYSTEMS = ("hf transformers",)


def compiled_step(model: LanguageModel):
    """A ``generate`` step_fn running ``torch.compile(model)`` on the single-token steps."""
    compiled = torch.compile(model, fullgraph=True)
    return lambda ids, cache: compiled(ids, cache=cache)


def memory_floor_ms(model: LanguageModel, bandwidth_gb_per_s: float) -> tuple[float, float]:
    """(ms, MB) of one decode step's reads -- every weight once, ``decode_weight_bytes`` -- at the given read
    bandwidth: the time no float32 implementation can beat."""
    megabytes = decode_weight_bytes(model) / 1e6
    return megabytes / bandwidth_gb_per_s, megabytes


def _run(system: str, model: LanguageModel, hf, ids: torch.Tensor, n: int,
         step_fn=None) -> tuple[torch.Tensor, list[float], float]:
    """Greedy generation of ``n`` tokens; returns (tokens, per-token timestamps, start time)."""
    clock = _Clock(skip_first_put=system in HF_SYSTEMS)
    start = time.perf_counter()
    with torch.no_grad():
        if system not in HF_SYSTEMS:
            out = generate(model, ids, sampling=SamplingConfig(max_new_tokens=n), on_token=clock,
                           step_fn=step_fn if system == "lrnn compiled" else None)
        else:
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                              streamer=clock)
    return out, clock.times, start


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    if args.new_tokens < 2:
        parser.error(f"--new-tokens must be >= 2, got {args.new_tokens}")
    if any(c < 1 for c in args.contexts):
        parser.error(f"--contexts must be >= 1, got {args.contexts}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        import transformers
    except ImportError:
        parser.error("this benchmark needs HF transformers: pip install transformers")
    torch.manual_seed(0)
    model = LanguageModel(lrnn_config()).eval()
    hf = hf_twin(model)
    systems = ("lrnn", "lrnn compiled", "hf transformers") if args.compile else ("lrnn", "hf transformers")
    step_fn = compiled_step(model) if args.compile else None
    print(f"# {command}\n# cpu, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}, float32, batch 1, greedy, {args.new_tokens} new tokens\n")
    probe = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = relative_error(model(probe), hf(probe).logits)
    print(f"same weights: relative logits error lrnn vs HF = {err:.1e}", flush=True)
    for system in systems:  # warm-up (first-call allocations, lazy imports, compilation)
        start = time.perf_counter()
        _run(system, model, hf, probe[:, :8], 8, step_fn)
        if system == "lrnn compiled":
            print(f"compiled the decode step in {time.perf_counter() - start:.0f} s (warm-up, not timed)", flush=True)
    bandwidth = measure_read_bandwidth(torch.device("cpu"))
    floor, megabytes = memory_floor_ms(model, bandwidth.gb_per_s)
    print(f"memory floor: the decode step's {megabytes:.0f} MB of weights at the read bandwidth measured now, "
          f"{bandwidth.gb_per_s:.1f} GB/s ({bandwidth.kernel}) = {floor:.1f} ms", flush=True)
    rows = []
    for context in args.contexts:
        ids = torch.randint(0, VOCAB, (1, context), generator=torch.Generator().manual_seed(context))
        outputs = {}
        for system in systems:
            out, times, start = _run(system, model, hf, ids, args.new_tokens, step_fn)
            outputs[system] = out
            decode_s = times[-1] - times[0]
            row = {"system": system, "prompt": context, "new_tokens": len(times), "prefill_s": times[0] - start,
                   "decode_tokens_per_s": (len(times) - 1) / decode_s,
                   "end_to_end_tokens_per_s": len(times) / (times[-1] - start)}
            rows.append(row)
            print(f"  {system:>15} prompt {context:>5}: first token after {row['prefill_s']:6.2f} s, "
                  f"decode {row['decode_tokens_per_s']:6.1f} tok/s ({1e3 / row['decode_tokens_per_s']:.1f} ms/token)",
                  flush=True)
        for system in systems:
            same = (outputs[system] == outputs["hf transformers"]).float().mean().item()
            if system != "hf transformers":
                print(f"  greedy tokens identical ({system} vs HF): {same:.1%}", flush=True)
            rows[-len(systems) + systems.index(system)]["tokens_identical"] = same
    print("\n| prompt | system | time to first token (s) | decode tok/s | end-to-end new tok/s "
          "| decode speed-up vs HF |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["prompt"] == row["prompt"] and r["system"] == "hf transformers")
        speedup = row["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        print(f"| {row['prompt']} | {row['system']} | {row['prefill_s']:.2f} | {row['decode_tokens_per_s']:.1f} | "
              f"{row['end_to_end_tokens_per_s']:.1f} | {speedup:.2f}x |")
    hf_best = max(r["decode_tokens_per_s"] for r in rows if r["system"] == "hf transformers")
    print(f"\nmemory floor {floor:.1f} ms/token = {1e3 / floor:.1f} tok/s: at most "
          f"{1e3 / floor / hf_best:.2f}x HF's best decode speed here for float32 weights at this thread count")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"command": command, "logits_relative_error": err, "memory_floor_ms": floor, "read_bandwidth_gb_per_s": bandwidth.gb_per_s, "rows": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
