"""What one speculative step's target work costs, per mixer: the verification pass and the commit.

A speculative step verifies the drafts in one target forward and leaves the cache on the accepted path;
whether drafting pays depends on how much more that costs than one decode step. For each mixer (random
weights of one LM shape, after a ``--context``-token prompt) this times, interleaved per round:

* ``decode step``: one cached token (autoregressive decoding's step, the baseline);
* ``chain k+1, chunked``: the ordinary cached forward over the pending token and k drafts (how a chain
  is verified with ``rollback="replay"``; a rejection adds a replay forward, not timed here);
* ``chain k+1, tree pass + select``: the same k+1 tokens verified as a chain-shaped tree and the deepest
  node committed by state selection (``rollback="select"``);
* ``tree B, pass + select``: the full static tree of each ``--branching`` shape (plus the pending token)
  verified in one ``forward_tree(keep_states=True)`` and a deepest node committed
  (``commit_tree_path(states=...)``, what ``tree_speculative_generate`` does per step).

Each case starts from a copy of the prompt's cache (the copy is part of every case's time, ~0.1 ms). The
weights do not change the time of a pass, so random ones serve; acceptance, which does depend on them, is
what ``lrnn bench speculative`` measures on trained models. Reported: the best and the median of
``--repeats`` rounds in ms, and the best as a multiple of the decode step's best.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from lrnn.atomic import atomic_write_text
from lrnn.bench.ops import machine_info
from lrnn.layers import MIXERS, mixer_spec
from lrnn.models import LanguageModel, ModelConfig
from lrnn.models.tree_speculative import check_branching, static_tree
from lrnn.ops import token_tree
from lrnn.validation import check_int

DEFAULT_MIXERS = ("attention", "mamba2", "deltanet", "gated_deltanet")
DEFAULT_BRANCHINGS = ((2, 2, 1), (3, 2, 2, 1))


def _branching(text: str) -> tuple[int, ...]:
    try:
        return check_branching(tuple(int(part) for part in text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--branching wants comma-separated positive ints, e.g. 3,2,2,1 ({err})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``verify`` options on ``parser``."""
    parser.add_argument("--mixers", default=",".join(DEFAULT_MIXERS),
                        help=f"comma-separated mixer names (default {','.join(DEFAULT_MIXERS)}); recurrent mixers "
                             "use the [-1, 1] range")
    parser.add_argument("--d-model", type=int, default=256, help="model width (default 256)")
    parser.add_argument("--layers", type=int, default=8, help="blocks (default 8)")
    parser.add_argument("--d-intermediate", type=int, default=1024, help="gated MLP width (default 1024)")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary (default 4096)")
    parser.add_argument("--context", type=int, default=128, help="prompt tokens before the step (default 128)")
    parser.add_argument("--draft-tokens", type=int, default=4, help="k, drafts of the chain cases (default 4)")
    parser.add_argument("--branching", type=_branching, nargs="+", default=None, metavar="B1,B2,..",
                        help="static tree shapes (default: "
                             f"{' '.join(','.join(map(str, b)) for b in DEFAULT_BRANCHINGS)})")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")


def build_model(mixer: str, d_model: int, layers: int, d_intermediate: int, vocab: int) -> LanguageModel:
    """A random-weight LM of the given shape (seed 0), [-1, 1] where the mixer has the switch, eval mode."""
    negative = mixer_spec(mixer).eigenvalue_switch
    config = ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=layers, mixer=mixer,
                         d_intermediate=d_intermediate, negative_eigenvalues=negative)
    torch.manual_seed(0)
    return LanguageModel(config).eval()


def cases(model: LanguageModel, cache, draft_tokens: int,
          branchings: list[tuple[int, ...]]) -> dict[str, Callable[[], None]]:
    """Name -> a no-argument call doing one case's target work from a copy of ``cache``."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)

    def forward(n: int) -> Callable[[], None]:
        ids = torch.randint(0, vocab, (1, n), generator=gen)
        return lambda: model(ids, cache=cache.clone())

    def tree_step(parents: torch.Tensor) -> Callable[[], None]:
        tree = token_tree(parents)
        ids = torch.randint(0, vocab, (1, tree.num_nodes), generator=gen)
        deepest = int(tree.depths.argmax())

        def run() -> None:
            copy = cache.clone()
            _, kept = model.forward_tree(ids, copy, tree, keep_states=True)
            model.commit_tree_path(ids, copy, tree, deepest, states=kept)
        return run

    k = draft_tokens + 1
    named = {"decode step": forward(1), f"chain {k}, chunked": forward(k),
             f"chain {k}, tree pass + select": tree_step(torch.arange(k) - 1)}
    for branching in branchings:
        parents = torch.cat([torch.tensor([-1]), static_tree(branching) + 1])  # node 0: the pending token
        named[f"tree {','.join(map(str, branching))} ({len(parents)} nodes), pass + select"] = tree_step(parents)
    return named


def bench_mixer(mixer: str, model: LanguageModel, args: argparse.Namespace) -> dict[str, Any]:
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, args.vocab, (1, args.context), generator=torch.Generator().manual_seed(0)),
              cache=cache, logits_to_keep=1)
        named = cases(model, cache, args.draft_tokens, list(args.branching or DEFAULT_BRANCHINGS))
        for call in named.values():  # warm-up
            call()
        times: dict[str, list[float]] = {name: [] for name in named}
        for _ in range(args.repeats):
            for name, call in named.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    base = min(times["decode step"])
    rows = [{"case": name, "best_ms": min(t) * 1e3, "median_ms": statistics.median(t) * 1e3,
             "x_decode_step": min(t) / base} for name, t in times.items()]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {"mixer": mixer, "params_m": params, "rows": rows}


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["### lrnn bench verify", "",
             f"Generated by `{report['command']}` at lrnn revision {m['lrnn_revision']}; {m['cpu_model']}, "
             f"{m['logical_cores']} logical cores, torch {m['torch']}, "
             f"**{report['threads']} intra-op thread(s)**, 1-minute load average "
             f"{report['load_average_at_start']} at the start and {report['load_average_at_end']} at the end. "
             f"Random weights: {report['layers']} blocks x d_model {report['d_model']}, MLP "
             f"{report['d_intermediate']}, vocabulary {report['vocab']}; after a {report['context']}-token "
             f"prompt; {report['repeats']} interleaved rounds.", ""]
    for target in report["targets"]:
        lines += [f"#### {target['mixer']} ({target['params_m']:.1f}M parameters)", "",
                  "| case | best ms | median ms | x decode step (best) |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['best_ms']:.2f} | {r['median_ms']:.2f} | {r['x_decode_step']:.2f} |"
                  for r in target["rows"]]
        lines.append("")
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> list[str]:
    for flag, value, minimum in (("--d-model", args.d_model, 1), ("--layers", args.layers, 1),
                                 ("--d-intermediate", args.d_intermediate, 0), ("--vocab", args.vocab, 2),
                                 ("--context", args.context, 1), ("--draft-tokens", args.draft_tokens, 1),
                                 ("--repeats", args.repeats, 1), ("--threads", args.threads, 1)):
        check_int(flag, value, minimum)
    mixers = [name.strip() for name in args.mixers.split(",") if name.strip()]
    if not mixers or any(name not in MIXERS for name in mixers):
        raise ValueError(f"--mixers must name registered mixers ({', '.join(MIXERS)}), got {args.mixers!r}")
    return mixers


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    """``lrnn bench verify``: check the flags (usage errors), time every mixer, print markdown, write JSON."""
    try:
        mixers = _check(args)
        models = {name: build_model(name, args.d_model, args.layers, args.d_intermediate, args.vocab)
                  for name in mixers}  # a shape a mixer cannot take is a usage error, before any timing
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    load = lambda: round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # noqa: E731
    report: dict[str, Any] = {"command": command, "machine": machine_info(torch.device("cpu")),
                              "threads": args.threads, "load_average_at_start": load(),
                              **{key: getattr(args, key) for key in ("d_model", "layers", "d_intermediate", "vocab",
                                                                       "context", "draft_tokens", "repeats")},
                              "targets": []}
    for mixer in mixers:
        print(f"timing {mixer} ...", file=sys.stderr, flush=True)
        report["targets"].append(bench_mixer(mixer, models[mixer], args))
    report["load_average_at_end"] = load()
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr, flush=True)
    print(render(report), end="")
    return 0
